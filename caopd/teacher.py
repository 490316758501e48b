"""The EMA teacher's life outside TRL's step: built from the student in memory, saved in checkpoints, restored.

TRL 1.16 keeps the teacher out of checkpoints, so a resumed run would restart it from the base weights, and with a
LoRA EMA teacher a resume fails outright ("Adapter with name 'teacher' already exists"). Here ``checkpoint-N/teacher/``
holds the teacher: the full model when it is a separate model, or the ``teacher`` LoRA adapter, which
``PeftModel.save_pretrained`` writes there by itself next to the student adapter.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, is_peft_model
from safetensors.torch import load_file
from transformers import TrainerCallback
from trl.experimental.sdft.teacher_sync import PEFTAdapterEMACallback
from trl.models import prepare_deepspeed, prepare_fsdp

TEACHER_DIR = "teacher"  # inside each checkpoint: the EMA teacher (full model) or the teacher LoRA adapter


def copy_of_student(accelerator: Accelerator, student: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the (unsharded) student, prepared like TRL prepares its teacher.

    TRL re-loads the teacher from ``config._name_or_path``, which fails for a model built in memory; a copy of
    the student needs no path.
    """
    teacher = copy.deepcopy(accelerator.unwrap_model(student))
    teacher.requires_grad_(False)
    teacher.eval()
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return prepare_deepspeed(teacher, accelerator)
    if accelerator.distributed_type == DistributedType.FSDP:
        return prepare_fsdp(teacher, accelerator)
    return accelerator.prepare_model(teacher, evaluation_mode=True)


def save_teacher(accelerator: Accelerator, teacher_model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Write a separate (full-model) teacher to ``checkpoint/teacher/``; every process takes part in the gather."""
    state_dict = accelerator.get_state_dict(teacher_model)
    if accelerator.is_main_process:
        teacher = accelerator.unwrap_model(teacher_model)
        teacher.save_pretrained(os.path.join(checkpoint, TEACHER_DIR), state_dict=state_dict)
    accelerator.wait_for_everyone()


def drop_recreated_teacher_adapter(model: torch.nn.Module) -> None:
    """Remove the ``teacher`` adapter the Trainer re-creates from a checkpoint; TRL's EMA callback adds its own."""
    if is_peft_model(model) and TEACHER_DIR in model.peft_config:
        model.delete_adapter(TEACHER_DIR)


@torch.no_grad()
def restore_teacher(
    checkpoint: str | Path,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    adapter_callback: PEFTAdapterEMACallback | None,
) -> None:
    """Load the teacher saved in ``checkpoint`` into the live one: the LoRA adapter, or the full model.

    ``student`` and ``teacher`` are unwrapped models (the same model for a LoRA teacher adapter).
    """
    directory = Path(checkpoint) / TEACHER_DIR
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{checkpoint} holds no EMA teacher ({TEACHER_DIR}/): it was not written by this trainer. Resuming "
            "from it would restart the teacher from the base weights; start a new run instead."
        )
    if adapter_callback is not None:
        from peft import set_peft_model_state_dict

        weights = load_file(str(directory / "adapter_model.safetensors"))
        active = student.active_adapter
        set_peft_model_state_dict(student, weights, adapter_name=TEACHER_DIR)
        student.set_adapter(active)
        for key, value in adapter_callback.shadow_weights.items():
            value.copy_(weights[key].to(value.device, value.dtype))
        return
    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing, unexpected = teacher.load_state_dict(state, strict=False)
    parameters = dict(teacher.named_parameters())  # tied aliases (lm_head = embeddings) are not listed here
    missing = [key for key in missing if key in parameters]
    if missing or unexpected:
        raise ValueError(
            f"the teacher saved in {directory} does not match the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): resume with the same --model_name and LoRA settings as the original run"
        )


class TeacherRestoreCallback(TrainerCallback):
    """On resume, load the checkpoint's teacher once TRL's callbacks have set the teacher up at train begin."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.resume_dir and args.teacher_model_kind == "ema":
            restore_teacher(
                trainer.resume_dir,
                trainer.accelerator.unwrap_model(trainer.model),
                trainer.accelerator.unwrap_model(trainer.teacher_model),
                trainer._ema_adapter_callback(),
            )

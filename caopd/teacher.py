"""The EMA teacher beside TRL's step: built from the student in memory, averaged in fp32, saved, restored.

**fp32 average.** The teacher follows ``teacher <- (1 - a) * teacher + a * student``. At a = 0.01 one update moves
a weight by a hundredth of its distance to the student, which for most weights is below bf16's resolution (8
significant bits): a bf16 teacher that is updated in place barely moves (TRL's callbacks, and the original release,
do that). Here the average lives in an fp32 shadow and the teacher's weights are the shadow rounded to their
dtype after every update. An fp32 teacher is its own shadow (no copy). Under DeepSpeed ZeRO-3 the student and the
teacher are partitioned alike, so each process averages its own partitions (``ds_tensor``): nothing is gathered per
step (TRL's callback gathers both whole models on every process at every step).

**Checkpoints.** ``checkpoint-N/teacher/`` holds the teacher: the model (written with ``save_pretrained``; under
ZeRO-3 gathered one parameter at a time with DeepSpeed's ``GatheredParameters``), or the ``teacher`` LoRA adapter
(PEFT writes it there next to the student adapter). Beside it, the fp32 shadow where it is not the model itself:
``ema_fp32.safetensors``, or under ZeRO-3 one ``ema_fp32.rank<r>-of-<w>.safetensors`` per process. A resume loads
both; resumed with another ZeRO-3 layout, the shadow restarts from the saved teacher weights (with a warning).
TRL 1.16 keeps the teacher out of checkpoints altogether, and with a LoRA EMA teacher a resume fails outright
("Adapter with name 'teacher' already exists").
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, is_peft_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from transformers import TrainerCallback
from trl.experimental.sdft.teacher_sync import PEFTAdapterEMACallback
from trl.models import prepare_deepspeed, prepare_fsdp

from caopd.atomic import write_atomically
from caopd.checkpoints import CheckpointError

TEACHER_DIR = "teacher"  # inside each checkpoint: the EMA teacher (full model) or the teacher LoRA adapter
logger = logging.getLogger(__name__)


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


def _local(parameter: torch.nn.Parameter) -> torch.Tensor:
    """The part of a parameter this process holds: its ZeRO-3 partition, or the whole tensor."""
    return parameter.ds_tensor if hasattr(parameter, "ds_tensor") else parameter.data


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype


def _is_partitioned(model: torch.nn.Module) -> bool:
    return any(hasattr(parameter, "ds_tensor") for parameter in model.parameters())


class FP32TeacherEMA(TrainerCallback):
    """Keeps a separate teacher model an EMA of the student, averaged in an fp32 shadow."""

    def __init__(self, student, teacher, accelerator: Accelerator, rate: float):
        self.student, self.teacher, self.accelerator, self.rate = student, teacher, accelerator, rate
        self.shadows: dict[str, torch.Tensor] | None = None

    def _pairs(self):
        """(name, student tensor, teacher tensor) for every parameter, as this process holds them."""
        student = self.accelerator.unwrap_model(self.student)
        teacher = self.accelerator.unwrap_model(self.teacher)
        for (name, mine), (_, theirs) in zip(student.named_parameters(), teacher.named_parameters(), strict=True):
            local_student, local_teacher = _local(mine), _local(theirs)
            if local_student.shape != local_teacher.shape:
                raise ValueError(f"student and teacher hold {name} in different shapes; they must be sharded alike")
            yield name, local_student, local_teacher

    @torch.no_grad()
    def load_shadows(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Start the shadows from ``state`` (a saved shadow) or, with None, from the teacher's current weights."""
        self.shadows = {}
        for name, _, teacher in self._pairs():
            if state is not None and name in state and state[name].shape != teacher.shape:
                raise CheckpointError(
                    f"the saved fp32 teacher holds {name} in shape {tuple(state[name].shape)}, the model in "
                    f"{tuple(teacher.shape)}: resume from a checkpoint of this model"
                )
            if teacher.dtype == torch.float32:
                self.shadows[name] = teacher  # an fp32 teacher is its own shadow
                if state is not None and name in state:
                    teacher.copy_(state[name])
            else:
                source = state[name] if state is not None and name in state else teacher
                self.shadows[name] = source.to(device=teacher.device, dtype=torch.float32).clone()

    def separate_shadows(self) -> dict[str, torch.Tensor]:
        """The shadows that are not the teacher's own weights (what a checkpoint must keep besides the model)."""
        teachers = {name: teacher for name, _, teacher in self._pairs()}
        return {
            name: shadow for name, shadow in (self.shadows or {}).items() if not _same_tensor(shadow, teachers[name])
        }

    def on_train_begin(self, args, state, control, **kwargs):
        if self.shadows is None:
            self.load_shadows()

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.teacher_sync_steps != 0:
            return
        if self.shadows is None:
            self.load_shadows()
        for name, student, teacher in self._pairs():
            shadow = self.shadows[name]
            shadow.mul_(1.0 - self.rate).add_(student.to(torch.float32), alpha=self.rate)
            if not _same_tensor(shadow, teacher):
                teacher.copy_(shadow)
        _release_gathered(self.accelerator.unwrap_model(self.teacher))


def _release_gathered(model: torch.nn.Module) -> None:
    """Under ZeRO-3, drop the full copies DeepSpeed keeps of small ("persistent") parameters.

    Their partitions were just updated; released, they are gathered again from the partitions at the next forward.
    """
    gathered = [p for p in model.parameters() if hasattr(p, "ds_tensor") and p.ds_status.name == "AVAILABLE"]
    if gathered:
        gathered[0].partition(param_list=gathered)


class FP32AdapterEMA(PEFTAdapterEMACallback):
    """TRL's EMA of a LoRA ``teacher`` adapter, with its shadow weights kept in fp32 whatever the adapter dtype."""

    def _initialize_teacher_adapter(self):
        initialized = self._initialized
        super()._initialize_teacher_adapter()
        if not initialized:
            self.shadow_weights = {key: value.float() for key, value in self.shadow_weights.items()}

    def separate_shadows(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow_weights or {})

    @torch.no_grad()
    def load_shadows(self, state: dict[str, torch.Tensor]) -> None:
        self._initialize_teacher_adapter()
        for key, value in self.shadow_weights.items():
            value.copy_(state[key].to(value.device, torch.float32))


def shadow_file_name(accelerator: Accelerator, partitioned: bool) -> str:
    if partitioned:
        return f"ema_fp32.rank{accelerator.process_index}-of-{accelerator.num_processes}.safetensors"
    return "ema_fp32.safetensors"


def _gathered_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full state dict on the main process (None elsewhere); ZeRO-3 parameters gathered one at a time.

    Tied weights (the output layer and the embeddings) stay one tensor, so ``save_pretrained`` writes them once.
    """
    state, copies = {}, {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in copies:
            if hasattr(tensor, "ds_tensor"):
                import deepspeed

                gather = deepspeed.zero.GatheredParameters([tensor])
            else:
                gather = nullcontext()
            with gather:
                copies[id(tensor)] = tensor.detach().cpu().clone() if accelerator.is_main_process else None
        state[name] = copies[id(tensor)]
    return state if accelerator.is_main_process else None


def save_teacher(accelerator: Accelerator, teacher_model: torch.nn.Module | None, ema, checkpoint: str | Path) -> None:
    """Write the teacher (when it is a separate model) and its fp32 shadow into ``checkpoint/teacher/``.

    Every process must call this: under ZeRO-3 each gathers and each writes its own shadow partitions.
    """
    directory = Path(checkpoint) / TEACHER_DIR
    partitioned = False
    if teacher_model is not None:
        teacher = accelerator.unwrap_model(teacher_model)
        partitioned = _is_partitioned(teacher)
        state = _gathered_state_dict(accelerator, teacher)
        if accelerator.is_main_process:
            teacher.save_pretrained(directory, state_dict=state)
    shadows = {name: tensor.detach().cpu().contiguous() for name, tensor in ema.separate_shadows().items()}
    if shadows and (partitioned or accelerator.is_main_process):
        payload = save(shadows)
        write_atomically(directory / shadow_file_name(accelerator, partitioned), lambda s: s.write(payload), "wb")
    accelerator.wait_for_everyone()


def drop_recreated_teacher_adapter(model: torch.nn.Module) -> None:
    """Remove the ``teacher`` adapter the Trainer re-creates from a checkpoint; TRL's EMA callback adds its own."""
    if is_peft_model(model) and TEACHER_DIR in model.peft_config:
        model.delete_adapter(TEACHER_DIR)


@torch.no_grad()
def restore_teacher(checkpoint: str | Path, accelerator: Accelerator, student, teacher_model, ema) -> None:
    """Load the teacher and its fp32 shadow saved in ``checkpoint`` into the live ones (LoRA adapter or model)."""
    directory = Path(checkpoint) / TEACHER_DIR
    if not directory.is_dir():
        raise CheckpointError(
            f"{checkpoint} holds no EMA teacher ({TEACHER_DIR}/): it was not written by this trainer. Resuming "
            "from it would restart the teacher from the base weights; start a new run instead."
        )
    if isinstance(ema, FP32AdapterEMA):
        _restore_adapter(directory, accelerator.unwrap_model(student), ema)
        return
    teacher = accelerator.unwrap_model(teacher_model)
    partitioned = _is_partitioned(teacher)
    state = {}
    for file in sorted(directory.glob("model*.safetensors")):
        state.update(_read(file))
    _load_full_state(teacher, state, directory, partitioned)
    shadow_file = directory / shadow_file_name(accelerator, partitioned)
    if shadow_file.is_file():
        ema.load_shadows(_read(shadow_file))
        return
    if any(directory.glob("ema_fp32*.safetensors")):
        logger.warning(
            "%s: its fp32 EMA shadow was saved by a run with another process layout; the teacher's average "
            "restarts from its saved weights (%s)",
            directory,
            teacher.dtype,
        )
    ema.load_shadows()


def _load_full_state(teacher: torch.nn.Module, state: dict, directory: Path, partitioned: bool) -> None:
    parameters = dict(teacher.named_parameters())  # tied aliases (lm_head = embeddings) are not listed here
    missing = [key for key in parameters if key not in state]
    unexpected = [key for key in state if key not in teacher.state_dict()]
    if missing or unexpected:
        raise CheckpointError(
            f"the teacher saved in {directory} does not match the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): resume with the same --model_name and LoRA settings as the original run"
        )
    for name, parameter in parameters.items():
        expected = tuple(getattr(parameter, "ds_shape", parameter.shape))
        if tuple(state[name].shape) != expected:
            raise CheckpointError(
                f"the teacher saved in {directory} holds {name} in shape {tuple(state[name].shape)}, the model in "
                f"{expected}: resume with the same --model_name as the original run, or from another checkpoint"
            )
    for name, parameter in parameters.items():
        if partitioned:
            import deepspeed

            with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    parameter.copy_(state[name].to(parameter.dtype))
        else:
            parameter.copy_(state[name].to(parameter.device, parameter.dtype))


def _restore_adapter(directory: Path, student: torch.nn.Module, ema: FP32AdapterEMA) -> None:
    from peft import set_peft_model_state_dict

    weights = _read(directory / "adapter_model.safetensors")
    shadow_file = directory / "ema_fp32.safetensors"
    shadows = _read(shadow_file) if shadow_file.is_file() else weights
    ema._initialize_teacher_adapter()  # the adapter and its shadow exist from train begin on; make sure
    if set(weights) != set(ema.shadow_weights) or set(shadows) != set(weights):
        raise CheckpointError(
            f"the teacher adapter in {directory} does not match this run's LoRA settings; resume with the same "
            "--lora_r and LoRA settings as the original run"
        )
    for key, value in ema.shadow_weights.items():
        if tuple(weights[key].shape) != tuple(value.shape) or tuple(shadows[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"the teacher adapter in {directory} holds {key} in shape {tuple(weights[key].shape)}, this run's in "
                f"{tuple(value.shape)}: resume with the same --lora_r and LoRA settings as the original run"
            )
    active = student.active_adapter
    set_peft_model_state_dict(student, weights, adapter_name=TEACHER_DIR)
    student.set_adapter(active)
    ema.load_shadows(shadows)


def _read(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or a CheckpointError saying that the file does not load."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} does not load ({err}); resume from another checkpoint") from err


class TeacherRestoreCallback(TrainerCallback):
    """On resume, load the checkpoint's teacher once the EMA callbacks have set the teacher up at train begin."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.resume_dir and args.teacher_model_kind == "ema":
            restore_teacher(trainer.resume_dir, trainer.accelerator, trainer.model, trainer.teacher_model, trainer.ema)

"""Checkpoints hold the EMA teacher; resuming restores it (full model and LoRA adapter) and training goes on."""

import hashlib

import pytest
import torch
from helpers import read_rollouts, toy_trainer
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback

from caopd.teacher import TEACHER_DIR


def _digest(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class _TeacherAtStart(TrainerCallback):
    """Hashes the teacher when training (re)starts, after every on_train_begin callback has run."""

    def __init__(self, read_teacher):
        self.read_teacher = read_teacher
        self.digest = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.digest is None:
            self.digest = _digest(self.read_teacher())


def _full_teacher(trainer):
    state = trainer.accelerator.unwrap_model(trainer.teacher_model).state_dict()
    return {k: v for k, v in state.items() if k != "lm_head.weight"}  # tied to the embeddings, not saved


def _saved_full_teacher(checkpoint):
    return load_file(str(checkpoint / TEACHER_DIR / "model.safetensors"))


def test_resume_restores_the_full_model_ema_teacher(model, tokenizer, tmp_path):
    from tiny_model import tiny_model

    base = _digest({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"})
    first = toy_trainer(model, tokenizer, tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    first.train()
    checkpoint = tmp_path / "checkpoint-1"
    saved = _digest(_saved_full_teacher(checkpoint))
    assert saved == _digest(_full_teacher(first))
    assert saved != base  # one EMA step moved the teacher: a restart from the base weights would be caught

    second = toy_trainer(tiny_model(tokenizer), tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    probe = _TeacherAtStart(lambda: _full_teacher(second))
    second.add_callback(probe)
    second.train(resume_from_checkpoint=str(checkpoint))
    assert probe.digest == saved
    assert second.state.global_step == 2
    assert (tmp_path / "checkpoint-2" / TEACHER_DIR / "model.safetensors").is_file()


def _lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.mark.parametrize("backbone", ["sdft", "sdpo"])
def test_resume_restores_the_lora_ema_teacher_adapter(model, tokenizer, tmp_path, backbone):
    from tiny_model import tiny_model

    settings = {"save_strategy": "steps", "save_steps": 1, "backbone": backbone}
    first = toy_trainer(model, tokenizer, tmp_path, peft_config=_lora(), **settings)
    first.train()
    checkpoint = tmp_path / "checkpoint-1"
    saved_file = load_file(str(checkpoint / TEACHER_DIR / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for v in saved_file.values())  # the EMA moved away from its zero start

    second = toy_trainer(
        tiny_model(tokenizer),
        tokenizer,
        tmp_path,
        peft_config=_lora(),
        max_steps=2,
        **settings,
    )

    def teacher_adapter():
        unwrapped = second.accelerator.unwrap_model(second.model)
        return get_peft_model_state_dict(unwrapped, adapter_name=TEACHER_DIR)

    probe = _TeacherAtStart(teacher_adapter)
    second.add_callback(probe)
    second.train(resume_from_checkpoint=str(checkpoint))  # TRL alone fails: "Adapter 'teacher' already exists"
    assert probe.digest == _digest(saved_file)
    assert second.state.global_step == 2
    shadow = second.ema.shadow_weights
    assert set(shadow) == set(saved_file)
    assert not all(torch.equal(shadow[k], saved_file[k]) for k in shadow)  # and the EMA went on from there


def _logged_steps(output_dir) -> list[int]:
    return [row["step"] for row in read_rollouts(output_dir)]


def test_the_rollout_log_holds_each_step_once_after_a_resume_or_a_fresh_start(model, tokenizer, tmp_path):
    from tiny_model import tiny_model

    toy_trainer(model, tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=1).train()
    first = read_rollouts(tmp_path)
    per_step = len(first) // 2
    assert _logged_steps(tmp_path) == [0] * per_step + [1] * per_step

    # Resuming from step 1 redoes step 1: its rows are replaced, step 0's are kept as they were. A last line cut
    # short by a killed run is dropped too.
    with open(tmp_path / "rollouts" / "rank0.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 1, "uid": ')
    resumed = toy_trainer(tiny_model(tokenizer), tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert _logged_steps(tmp_path) == [0] * per_step + [1] * per_step
    assert read_rollouts(tmp_path)[:per_step] == first[:per_step]

    # A fresh run in the same folder starts a new log instead of appending to the old run's.
    toy_trainer(tiny_model(tokenizer), tokenizer, tmp_path, max_steps=1).train()
    assert _logged_steps(tmp_path) == [0] * per_step


@pytest.mark.parametrize("backbone", ["sdft", "grpo"])
def test_a_non_finite_loss_stops_the_step_before_the_optimizer_and_saves_nothing(model, tokenizer, tmp_path, backbone):
    from caopd.checkpoints import TrainingDiverged

    trainer = toy_trainer(model, tokenizer, tmp_path, backbone=backbone, save_strategy="steps", save_steps=1)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    compute_loss = trainer.compute_loss
    trainer.compute_loss = lambda *args, **kwargs: compute_loss(*args, **kwargs) * float("nan")
    with pytest.raises(TrainingDiverged, match="diverged at step 1: the loss is not finite; no checkpoint was saved"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))
    assert all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())


def test_non_finite_weights_are_never_saved_and_sampling_on_them_is_named(model, tokenizer, tmp_path):
    from caopd.checkpoints import TrainingDiverged, sampling_divergence

    trainer = toy_trainer(model, tokenizer, tmp_path, save_strategy="steps", save_steps=1)
    next(p for p in trainer.model.parameters() if p.requires_grad).data[0] = float("inf")
    with pytest.raises(TrainingDiverged, match="weights became non-finite and were not saved"):
        trainer._save_checkpoint(trainer.model, None)
    assert not list(tmp_path.glob("checkpoint-*"))
    error = RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    line = sampling_divergence(error, 3, str(tmp_path))
    assert line.startswith("training diverged at step 4: the model's next-token probabilities are not finite")
    assert sampling_divergence(RuntimeError("CUDA out of memory"), 3, str(tmp_path)) is None


def test_damaged_checkpoints_are_named_and_latest_falls_back_to_a_sound_one(model, tokenizer, tmp_path):
    """Same-size garbage passes the completion marker; the content checks catch it in JSON, torch and safetensors
    files (non-finite weights under an intact header too), and `latest` resumes from the newest sound checkpoint."""
    from safetensors.torch import save_file

    from caopd.checkpoints import checkpoint_damage, latest_sound

    trainer = toy_trainer(model, tokenizer, tmp_path, save_strategy="steps", save_steps=1, max_steps=3)
    trainer.train()
    assert checkpoint_damage(tmp_path / "checkpoint-3") is None

    def same_size_garbage(path):
        path.write_bytes(b"x" * path.stat().st_size)

    same_size_garbage(tmp_path / "checkpoint-3" / "trainer_state.json")
    assert checkpoint_damage(tmp_path / "checkpoint-3") == "trainer_state.json does not parse as JSON (JSONDecodeError)"
    optimizer = tmp_path / "checkpoint-2" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor
    optimizer.write_bytes(bytes(data))
    assert "optimizer.pt is damaged" in checkpoint_damage(tmp_path / "checkpoint-2")
    latest, passed = latest_sound(tmp_path)
    assert latest.name == "checkpoint-1" and [folder.name for folder, _ in passed] == ["checkpoint-3", "checkpoint-2"]
    weights = next((tmp_path / "checkpoint-1").glob("*.safetensors"))
    tensors = load_file(weights)
    first = next(key for key, value in tensors.items() if value.is_floating_point())
    tensors[first][0] = float("nan")
    save_file(tensors, weights)
    assert checkpoint_damage(tmp_path / "checkpoint-1") == f"{weights.name} holds non-finite values in {first}"

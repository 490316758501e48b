"""CaOPD on the SDPO backbone: TRL's SDPOTrainer when calibration is off, and the CaOPD step on SDPO's own
successes (P_acc, rewritten completions, the note in the teacher's reprompt) when it is on."""

from collections import defaultdict

import pytest
import torch
from helpers import (
    TOY_TASK,
    assert_rewritten_with_group_rates,
    capture_batches,
    read_rollouts,
    toy_dataset,
    toy_trainer,
    verify_even_length,
)
from tiny_model import real_tokenizer, save_tiny_model
from transformers import AutoModelForCausalLM
from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

import main
from caopd.rewards import VerifierReward
from distil_config import SDPODistilConfig
from sdpo_trainer import SDPODistilTrainer

SETTINGS = {
    "use_cpu": True,
    "bf16": False,
    "report_to": "none",
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_generations": 4,
    "max_completion_length": 24,
    "max_prompt_length": 96,
    "max_steps": 2,
    "learning_rate": 1e-2,
    "optim": "sgd",
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
    "disable_tqdm": True,
    "teacher_update_rate": 0.5,
}


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_without_calibration_it_is_trls_sdpo_trainer(tmp_path, weight):
    """Same tiny model, rows, reward and seed: equal losses at every step and equal weights after two steps."""
    model_dir = save_tiny_model(tmp_path / "tiny")
    dataset = toy_dataset().map(lambda _, index: {"prompt_uid": index}, with_indices=True)
    theirs = SDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=[VerifierReward(TOY_TASK)],
        args=SDPOConfig(output_dir=str(tmp_path / "trl"), distillation_weight=weight, **SETTINGS),
        train_dataset=dataset,
        processing_class=real_tokenizer(),
    )
    theirs.train()
    ours = SDPODistilTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=SDPODistilConfig(
            output_dir=str(tmp_path / "ours"),
            distillation_weight=weight,
            empirical_calibration=False,
            shared_prefix=False,
            **SETTINGS,
        ),
        train_dataset=toy_dataset(),
        task=TOY_TASK,
        processing_class=real_tokenizer(),
    )
    ours.train()
    assert len(_losses(ours)) == 2
    assert _losses(ours) == pytest.approx(_losses(theirs), abs=1e-6)
    mine, reference = dict(ours.model.named_parameters()), dict(theirs.model.named_parameters())
    assert any(
        not torch.equal(mine[name], p) for name, p in AutoModelForCausalLM.from_pretrained(model_dir).named_parameters()
    )
    for name, parameter in reference.items():
        torch.testing.assert_close(mine[name], parameter, rtol=1e-6, atol=1e-7)


def test_caopd_on_sdpo_uses_sdpos_successes_and_notes_the_teacher(model, tokenizer, tmp_path):
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone="sdpo", max_steps=1)
    captured = capture_batches(trainer)
    trainer.train()
    verdicts = assert_rewritten_with_group_rates(trainer, captured, k=4)  # P_acc = SDPO's successes / K

    inputs, batch = captured["final"][0]
    rates = {uid: sum(group) / 4 for uid, group in verdicts.items()}
    closing = "Correctly solve the original question."
    for row, example in enumerate(inputs):
        teacher = tokenizer.decode(batch["teacher_input_ids"][row], skip_special_tokens=True)
        p = rates[example["prompt_uid"]]
        taught = batch["self_distillation_mask"][row].item() == 1.0
        others = sum(verdicts[example["prompt_uid"]]) - verify_even_length(
            trainer._decode(trainer._strip_eos(captured["raw"][0][row])), None
        )
        assert taught == (others > 0)  # SDPO's rule: a successful sibling is shown (not the rollout itself)
        if taught:
            solution = teacher[teacher.index("Correct solution:") : teacher.index(closing)]
            assert f"Confidence: {p:.2f}" in solution  # the shown rollout carries P_acc, not its own confidence
            note = f"Note: The empirical confidence for this question is {p:.2f}."
            assert teacher.index(note) < teacher.index(closing)
    logged = trainer.state.log_history[0]
    assert logged["caopd/p_acc_mean"] == pytest.approx(sum(rates.values()) / len(rates))
    assert {"caopd/loss_confidence", "caopd/loss_reasoning", "self_distillation/reward_mean"} <= set(logged)
    rows = read_rollouts(tmp_path)
    assert len(rows) == 8 and all(row["target"].endswith(f"Confidence: {row['p_acc']:.2f}") for row in rows)


def test_the_policy_gradient_term_sees_sampled_tokens_only(model, tokenizer, tmp_path, monkeypatch):
    """With distillation_weight < 1, SDPO's policy loss is computed on the rewritten completion: the confidence
    line CaOPD wrote was never sampled, so it is masked out of that term (its advantage is the rollout's)."""
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone="sdpo", max_steps=1, distillation_weight=0.5)
    seen = []
    policy_loss = SDPOTrainer._compute_policy_loss

    def record(self, inputs, student_logits):
        seen.append((inputs["completion_mask"].clone(), inputs["sampled_mask"].clone()))
        return policy_loss(self, inputs, student_logits)

    monkeypatch.setattr(SDPOTrainer, "_compute_policy_loss", record)
    trainer.train()
    (mask, sampled), *_ = seen
    assert torch.equal(mask, mask * sampled) and (sampled.sum(1) < mask.new_ones(mask.shape).sum(1)).all()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backbone", "sdpo", "--teacher_context_mode", "demo"], "--teacher_context_mode sets"),
        (["--backbone", "sdpo", "--teacher_instruction", "Go."], "--teacher_instruction sets"),
        (["--distillation_weight", "0.5"], "--distillation_weight is a setting of --backbone sdpo"),
        (["--backbone", "sdpo", "--distillation_weight", "1.5"], "--distillation_weight must lie in [0, 1]"),
        (["--backbone", "sdpo", "--reprompt_template", "{prompt}{x}"], "does not format with"),
        (["--backbone", "sdpo", "--loss_type", "ppo"], "--loss_type must be one of"),
        (["--backbone", "sdpo", "--distillation_is_clip", "0"], "--distillation_is_clip must be positive"),
        (["--backbone", "sdpo", "--reprompt_template", "{prompt}{solution}{feedback}"], "closing instruction"),
        (["--backbone", "sdpo", "--distillation_mode", "sampled_token", "--distillation_alpha", "0.5"], "reverse KL"),
    ],
)
def test_backbone_flags_are_checked_by_name(tmp_path, capsys, argv, message):
    flags = ["--output_dir", str(tmp_path), "--model_name", "smollm2", "--dataset_name", "arithmetic", "--no_wandb"]
    assert main.main([*flags, *argv]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_sdpo_trains_through_the_cli_and_resumes_its_teacher(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    flags = ["--backbone", "sdpo", "--model_name", str(model_dir), "--dataset_name", "arithmetic", "--no_wandb"]
    flags += ["--output_dir", str(tmp_path / "run"), "--num_prompts_per_batch", "2", "--num_generations", "4"]
    flags += ["--per_device_train_batch_size", "8", "--max_completion_length", "24", "--max_prompt_length", "512"]
    flags += ["--save_steps", "1", "--warmup_steps", "0", "--save_rollouts", "--distillation_weight", "0.5"]
    assert main.main([*flags, "--max_steps", "1"]) == 0
    assert (tmp_path / "run" / "checkpoint-1" / "teacher" / "model.safetensors").is_file()
    assert main.main([*flags, "--max_steps", "2", "--resume_from_checkpoint", "latest"]) == 0
    steps = defaultdict(int)
    for row in read_rollouts(tmp_path / "run"):
        steps[row["step"]] += 1
    assert dict(steps) == {0: 8, 1: 8}  # each step logged once across the resume
    assert "backbone: sdpo" in (tmp_path / "run" / "caopd_config.yaml").read_text()

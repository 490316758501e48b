"""CaOPD on the SDPO backbone: TRL's SDPOTrainer when calibration is off, and the CaOPD step on SDPO's own
successes (P_acc, rewritten completions, the note in the teacher's reprompt) when it is on."""

from collections import defaultdict

import pytest
import torch
from datasets import Dataset, Value
from helpers import (
    BACKBONES,
    TOY_TASK,
    assert_rewritten_with_group_rates,
    capture_batches,
    read_rollouts,
    toy_config,
    toy_dataset,
    toy_trainer,
    verify_even_length,
)
from tiny_model import real_tokenizer, save_tiny_model
from transformers import AutoModelForCausalLM
from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

import main
from caopd.rewards import VerifierReward
from caopd.tasks.base import Task
from distil_config import SDPODistilConfig
from distil_trainer import add_trainer_columns
from sdpo_trainer import SDPODistilTrainer, sdpo_columns

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
    row_verdicts = [verify_even_length(trainer._decode(trainer._strip_eos(ids)), None) for ids in captured["raw"][0]]
    closing = "Correctly solve the original question."
    for row, example in enumerate(inputs):
        teacher = tokenizer.decode(batch["teacher_input_ids"][row], skip_special_tokens=True)
        p = rates[example["prompt_uid"]]
        taught = batch["self_distillation_mask"][row].item() == 1.0
        others = sum(verdicts[example["prompt_uid"]]) - row_verdicts[row]
        assert taught == (others > 0)  # SDPO's rule: a successful sibling is shown (not the rollout itself)
        if taught:
            solution = teacher[teacher.index("Correct solution:") : teacher.index(closing)]
            assert f"Confidence: {p:.2f}" in solution  # the shown rollout carries P_acc, not its own confidence
            note = f"Note: The empirical confidence for this question is {p:.2f}."
            assert teacher.index(note) < teacher.index(closing)
            siblings = [i for i, other in enumerate(inputs) if other["prompt_uid"] == example["prompt_uid"]]
            shown = next(i for i in siblings if i != row and row_verdicts[i])  # TRL: the first successful sibling
            assert trainer._decode(batch["completion_ids"][shown]).strip() in solution  # rewritten to P_acc
    width = batch["completion_ids"].size(1)  # the teacher scores the same tokens, masked alike, as the student
    assert torch.equal(batch["teacher_input_ids"][:, -width:], batch["completion_ids"])
    assert torch.equal(batch["teacher_attention_mask"][:, -width:], batch["completion_mask"])
    assert torch.equal(batch["raw_completion_lengths"], batch["completion_mask"].sum(1))
    logged = trainer.state.log_history[0]
    assert logged["caopd/p_acc_mean"] == pytest.approx(sum(rates.values()) / len(rates))
    taught = batch["self_distillation_mask"]
    assert (logged["caopd/rows_distilled"], logged["caopd/rows_without_successful_sibling"]) == (
        taught.sum().item(),
        len(taught) - taught.sum().item(),
    )
    sampled_lengths = [len(ids) for ids in captured["raw"][0]]
    assert logged["caopd/completion_length_sampled"] == pytest.approx(sum(sampled_lengths) / len(sampled_lengths))
    trained = batch["raw_completion_lengths"].float().mean().item()
    assert logged["caopd/completion_length_trained"] == pytest.approx(trained)
    assert logged["caopd/rollout_accuracy"] == pytest.approx(sum(row_verdicts) / len(inputs))
    assert {"caopd/loss_confidence", "caopd/loss_reasoning", "self_distillation/reward_mean"} <= set(logged)
    rows = read_rollouts(tmp_path)
    assert len(rows) == 8 and all(row["target"].endswith(f"Confidence: {row['p_acc']:.2f}") for row in rows)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-loss", "whole-logits"])
def test_the_policy_gradient_term_sees_sampled_tokens_only(model, tokenizer, tmp_path, monkeypatch, chunked):
    """With distillation_weight < 1, SDPO's policy loss is computed on the rewritten completion: the confidence
    line CaOPD wrote was never sampled, so it is masked out of that term (its advantage is the rollout's). The first
    num_loss_tokens_to_skip tokens leave the distillation loss only; the policy term keeps TRL's mask. Recorded where
    each loss path computes its terms: TRL's methods on whole logits, ours on the chunked loss."""
    trainer = toy_trainer(
        model, tokenizer, tmp_path, backbone="sdpo", max_steps=1, distillation_weight=0.5, num_loss_tokens_to_skip=2,
        chunked_loss=chunked,
    )  # fmt: skip
    seen = {}
    owner = SDPODistilTrainer if chunked else SDPOTrainer
    names = ("policy_loss_from_logps", "_chunked_self_distillation_loss") if chunked else (
        "_compute_policy_loss", "_compute_self_distillation_loss"
    )  # fmt: skip
    policy_loss, distillation_loss = (getattr(owner, name) for name in names)

    def record_policy(self, inputs, student_outputs):
        seen["policy"] = (inputs["completion_mask"].clone(), inputs["sampled_mask"].clone())
        return policy_loss(self, inputs, student_outputs)

    def record_distillation(self, model, inputs, logits):
        seen["distillation"] = (logits.loss_mask.clone(), inputs["self_distillation_mask"].clone())
        return distillation_loss(self, model, inputs, logits)

    monkeypatch.setattr(owner, names[0], record_policy)
    monkeypatch.setattr(owner, names[1], record_distillation)
    captured = capture_batches(trainer)
    trainer.train()
    mask, sampled = seen["policy"]
    completion_mask = captured["final"][0][1]["completion_mask"]
    assert torch.equal(mask, completion_mask * sampled) and (sampled.sum(1) < completion_mask.sum(1)).all()
    assert mask[:, :2].all()  # the skip does not reach the policy term
    loss_mask, taught = seen["distillation"]
    expected = completion_mask * taught.unsqueeze(1)
    expected[:, :2] = 0
    assert torch.equal(loss_mask, expected)


@pytest.mark.parametrize("p_acc", [0.0, 1.0])
def test_what_a_question_solved_never_or_always_teaches(model, tokenizer, tmp_path, p_acc):
    """P_acc 0: no rollout has a successful sibling, so SDPO distils nothing and every advantage is 0: the step
    leaves no gradient (the model never sees 'Confidence: 0.00' from SDPO). P_acc 1: every rollout is distilled,
    towards 'Confidence: 1.00', with the note saying 1.00."""
    task = Task(name="fixed", verify_fn=lambda _response, _truth: p_acc == 1.0, load=lambda path: toy_dataset())
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone="sdpo", task=task, distillation_weight=0.5)
    captured = capture_batches(trainer)
    trainer.train()
    _, batch = captured["final"][0]
    logged = trainer.state.log_history[0]
    assert batch["self_distillation_mask"].tolist() == [p_acc] * 8
    assert all(row["target"].endswith(f"Confidence: {p_acc:.2f}") for row in read_rollouts(tmp_path))
    if p_acc == 0.0:
        assert logged["grad_norm"] == 0.0 and logged["caopd/rows_without_successful_sibling"] == 8
    else:
        assert logged["grad_norm"] > 0.0 and logged["caopd/rows_distilled"] == 8
        teacher = tokenizer.decode(batch["teacher_input_ids"][0], skip_special_tokens=True)
        assert "empirical confidence for this question is 1.00" in teacher


def test_sdpo_rows_take_trls_feedback_column_and_refuse_two():
    rows = toy_dataset(2).add_column("privileged_context", ["Error: timeout", "Error: wrong tool"])
    assert sdpo_columns(rows, True)["privileged_context"] == ["Error: timeout", "Error: wrong tool"]
    assert sdpo_columns(rows.rename_column("privileged_context", "feedback"), True)["privileged_context"][0] == (
        "Error: timeout"
    )
    assert "privileged_context" not in sdpo_columns(rows, False).column_names
    with pytest.raises(ValueError, match="twice"):
        sdpo_columns(rows.add_column("feedback", ["a", "b"]), True)
    with pytest.raises(ValueError, match=r"'privileged_context' \(TRL's name\) or 'feedback'"):
        sdpo_columns(toy_dataset(2), True)


def test_sdft_rows_without_a_demonstration_are_refused_by_column():
    rows = toy_dataset(2).cast_column("demonstration", Value("string"))
    rows = Dataset.from_dict({**rows.to_dict(), "demonstration": ["Answer: 1", None]}, features=rows.features)
    with pytest.raises(ValueError, match="row 1: the 'demonstration' column holds NoneType"):
        add_trainer_columns(rows, "demo")


@pytest.mark.parametrize("backbone", ["sdft", "sdpo"])
def test_an_evaluation_set_gets_its_columns_and_evaluates(model, tokenizer, tmp_path, backbone):
    trainer_class = BACKBONES[backbone][1]
    trainer = trainer_class(
        model=model,
        args=toy_config(tmp_path, backbone, per_device_eval_batch_size=8),
        train_dataset=toy_dataset(),
        eval_dataset={"held_out": toy_dataset(2)},
        task=TOY_TASK,
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    assert "prompt_uid" in trainer.eval_dataset["held_out"].column_names and "eval_held_out_loss" in metrics


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--backbone", "sdpo", "--teacher_context_mode", "demo"],
            "--teacher_context_mode is a setting of --backbone sdft",
        ),
        (
            ["--backbone", "sdpo", "--teacher_instruction", "Go."],
            "--teacher_instruction is a setting of --backbone sdft",
        ),
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

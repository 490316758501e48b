"""The paper's RL baselines on TRL's GRPOTrainer: the rewards as functions (hand-computed table, RLCR a proper
scoring rule, CAR's margin), short runs of each reward, a resume, and the flags a GRPO run refuses."""

import json
from collections import defaultdict
from itertools import pairwise

import pytest
from helpers import TOY_TASK, read_rollouts, toy_trainer
from tiny_model import save_tiny_model

import main
from caopd.rewards import CalibrationReward, car_reward, rlcr_reward

STATED = {"0": 0.0, "0.3": 0.3, "0.9": 0.9, "1": 1.0, "missing": None, "malformed": None}
TEXTS = {
    "0": "Answer: x\nConfidence: 0",
    "0.3": "Answer: x\nConfidence: 0.3",
    "0.9": "Answer: x\nConfidence: 0.9",
    "1": "Answer: x\nConfidence: 1",
    "missing": "Answer: x",
    "malformed": "Answer: x\nConfidence: high",
}
# Hand-computed: rlcr = c - (q - c)^2; car (margin 0.5) = 0.5 + 0.5 (1 - (1 - q)^2) if right, -0.5 - 0.5 q^2 if
# wrong; a missing or unreadable confidence is scored with the worst it could state (q = 0 right, q = 1 wrong).
EXPECTED = {
    ("rlcr", True): {"0": 0.0, "0.3": 0.51, "0.9": 0.99, "1": 1.0, "missing": 0.0, "malformed": 0.0},
    ("rlcr", False): {"0": 0.0, "0.3": -0.09, "0.9": -0.81, "1": -1.0, "missing": -1.0, "malformed": -1.0},
    ("car", True): {"0": 0.5, "0.3": 0.755, "0.9": 0.995, "1": 1.0, "missing": 0.5, "malformed": 0.5},
    ("car", False): {"0": -0.5, "0.3": -0.545, "0.9": -0.905, "1": -1.0, "missing": -1.0, "malformed": -1.0},
    ("correctness", True): dict.fromkeys(TEXTS, 1.0),
    ("correctness", False): dict.fromkeys(TEXTS, 0.0),
}


@pytest.mark.parametrize(("rule", "correct"), list(EXPECTED))
def test_rewards_of_a_table_of_completions(rule, correct):
    reward = CalibrationReward(TOY_TASK, rule)
    # The toy verifier accepts responses of even length: pad each text to the wanted verdict.
    texts = {name: text + (" " if (len(text) % 2 == 0) != correct else "") for name, text in TEXTS.items()}
    completions = [[{"role": "assistant", "content": text}] for text in texts.values()]
    got = reward(prompts=[None] * len(texts), completions=completions, ground_truth=["0"] * len(texts))
    assert reward.last_verdicts == [correct] * len(texts)
    assert dict(zip(texts, got)) == pytest.approx(EXPECTED[(rule, correct)])


GRID = [i / 20 for i in range(21)]


def test_rlcr_is_a_proper_scoring_rule():
    """Under accuracy p the expected reward p * r(right, q) + (1 - p) * r(wrong, q) is maximized at q = p."""
    for p in GRID:
        expected = [p * rlcr_reward(True, q) + (1 - p) * rlcr_reward(False, q) for q in GRID]
        assert GRID[expected.index(max(expected))] == pytest.approx(p)


def test_car_separates_right_from_wrong_and_punishes_confident_errors_hardest():
    for margin in (0.1, 0.5):
        right = [car_reward(True, q, margin) for q in GRID]
        wrong = [car_reward(False, q, margin) for q in GRID]
        assert min(right) - max(wrong) == pytest.approx(2 * margin)  # every right answer above every wrong one
        assert all(a > b for a, b in pairwise(wrong))  # the more confident the error, the lower
        assert wrong[-1] == min(wrong) == -1.0
        for p in GRID:  # and still proper: honesty maximizes the expected reward
            expected = [p * car_reward(True, q, margin) + (1 - p) * car_reward(False, q, margin) for q in GRID]
            assert GRID[expected.index(max(expected))] == pytest.approx(p)


@pytest.mark.parametrize("rule", ["correctness", "rlcr", "car"])
def test_a_short_grpo_run_of_each_reward(model, tokenizer, tmp_path, rule):
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone="grpo", rl_reward=rule, max_steps=1)
    trainer.train()
    logged = trainer.state.log_history[0]
    rows = read_rollouts(tmp_path)
    assert len(rows) == 8
    groups = defaultdict(list)
    for row in rows:
        groups[row["uid"]].append(row)
        expected = {"correctness": float(row["correct"]), "rlcr": rlcr_reward(row["correct"], row["confidence"])}
        expected["car"] = car_reward(row["correct"], row["confidence"])
        assert row["reward"] == pytest.approx(expected[rule])
        assert row["target"] == row["completion"]  # no CaOPD rewrite in the RL baselines
    assert logged["caopd/p_acc_mean"] == pytest.approx(
        sum(sum(r["correct"] for r in g) / len(g) for g in groups.values()) / len(groups)
    )
    assert logged[f"rewards/{rule}/mean"] == pytest.approx(sum(r["reward"] for r in rows) / len(rows))


def test_grpo_resumes_from_latest_through_the_cli(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    flags = ["--backbone", "grpo", "--rl_reward", "rlcr", "--model_name", str(model_dir), "--no_wandb"]
    flags += ["--dataset_name", "arithmetic", "--output_dir", str(tmp_path / "run"), "--num_prompts_per_batch", "2"]
    flags += ["--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "16"]
    flags += ["--max_prompt_length", "512", "--save_steps", "1", "--warmup_steps", "0", "--save_rollouts"]
    assert main.main([*flags, "--max_steps", "1"]) == 0
    assert main.main([*flags, "--max_steps", "2", "--resume_from_checkpoint", "latest"]) == 0
    assert sorted({row["step"] for row in read_rollouts(tmp_path / "run")}) == [0, 1]
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and "rewards/rlcr/mean" in state["log_history"][-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rl_reward", "rlcr"], "--rl_reward is a setting of --backbone grpo"),
        (["--backbone", "sdpo", "--car_margin", "0.2"], "--car_margin is a setting of --backbone grpo"),
        (["--backbone", "grpo", "--rl_reward", "brier"], "--rl_reward must be one of"),
        (["--backbone", "grpo", "--teacher_context_mode", "demo"], "--backbone grpo has no teacher"),
        (["--backbone", "grpo", "--ref_model_mixup_alpha", "0.05"], "--ref_model_mixup_alpha is a setting of the"),
        (["--backbone", "grpo", "--self_consistency"], "--self_consistency is a setting of the distillation"),
        (["--backbone", "grpo", "--distillation_weight", "0.5"], "--distillation_weight is a setting of --backbone"),
        (["--backbone", "grpo", "--car_margin", "1.5"], "--car_margin must lie in [0, 1)"),
    ],
)
def test_bad_combinations_are_one_line(tmp_path, capsys, argv, message):
    flags = ["--output_dir", str(tmp_path), "--model_name", "smollm2", "--dataset_name", "arithmetic", "--no_wandb"]
    assert main.main([*flags, *argv]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]

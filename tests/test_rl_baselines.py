"""The paper's RL baselines on TRL's GRPOTrainer: the rewards as functions (hand-computed table, RLCR a proper
scoring rule, CAR's margin, RLCR's format gate), short runs of each reward, a resume, and the flags a GRPO run
refuses."""

import json
from collections import defaultdict
from itertools import pairwise

import pytest
from helpers import read_rollouts, toy_trainer
from tiny_model import save_tiny_model

import main
from caopd.confidence import parse_confidence
from caopd.held_out import CURVE_NAME, read_history
from caopd.rewards import brier_term, car_term, rl_reward_functions
from caopd.tasks.arithmetic import ARITHMETIC_TASK

# RLCR's pipeline by hand: format, accuracy and calibration terms, weight 0.5 each, all three 0 when the format fails
# (no answer, or a confidence missing, unparsable or written outside [0, 1]). Brier term 1 - (c - q)^2; CAR's
# margin-separated term (margin 0.5): 0.75 + 0.25 (1 - (1 - q)^2) if right, 0.25 (1 - q^2) if wrong.
# Arithmetic responses: the answer 4 is right; the task reads the answer from the "Answer:" line.
CASES = {
    "right, q 0.8": ("Answer: 4\nConfidence: 0.8", True),
    "wrong, q 0.8": ("Answer: 5\nConfidence: 0.8", False),
    "right, q 0": ("Answer: 4\nConfidence: 0", True),
    "wrong, q 1": ("Answer: 5\nConfidence: 1", False),
    "missing": ("Answer: 4", True),
    "1.67": ("Answer: 4\nConfidence: 1.67", True),
    "85%": ("Answer: 4\nConfidence: 85%", True),
    "unparsable": ("Answer: 4\nConfidence: high", True),
    "no answer": ("I think it is four.\nConfidence: 0.8", False),
}
TERMS = {  # (format, accuracy, calibration) per case and rule
    "rlcr": {
        "right, q 0.8": (1, 1, 0.96),
        "wrong, q 0.8": (1, 0, 0.36),
        "right, q 0": (1, 1, 0.0),
        "wrong, q 1": (1, 0, 0.0),
    },
    "car": {
        "right, q 0.8": (1, 1, 0.99),
        "wrong, q 0.8": (1, 0, 0.09),
        "right, q 0": (1, 1, 0.75),
        "wrong, q 1": (1, 0, 0.0),
    },
}
TOTALS = {  # the weighted sum TRL forms: 0.5 x (format + accuracy + calibration)
    "rlcr": {"right, q 0.8": 1.48, "wrong, q 0.8": 0.68, "right, q 0": 1.0, "wrong, q 1": 0.5},
    "car": {"right, q 0.8": 1.495, "wrong, q 0.8": 0.545, "right, q 0": 1.375, "wrong, q 1": 0.5},
}


@pytest.mark.parametrize("rule", ["rlcr", "car"])
def test_gated_reward_terms_against_hand_values(rule):
    judge, terms, weights = rl_reward_functions(ARITHMETIC_TASK, rule)
    assert [term.__name__ for term in terms] == ["format", "accuracy", "brier" if rule == "rlcr" else "car_calibration"]
    assert weights == [0.5, 0.5, 0.5]
    completions = [[{"role": "assistant", "content": text}] for text, _ in CASES.values()]
    columns = {"prompts": [None] * len(CASES), "completions": completions, "ground_truth": ["4"] * len(CASES)}
    per_term = [term(**columns) for term in terms]
    assert judge.last_verdicts == [correct for _, correct in CASES.values()]
    for index, name in enumerate(CASES):
        got = tuple(values[index] for values in per_term)
        expected = TERMS[rule].get(name, (0, 0, 0))  # every other case fails the format: all three terms 0
        assert got == pytest.approx(expected), name
        total = sum(w * v for w, v in zip(weights, got, strict=True))
        assert total == pytest.approx(TOTALS[rule].get(name, 0.0)), name


def test_evaluation_and_the_rewards_read_a_response_alike():
    """The reward's q is the value evaluation reports, under either reading; RLCR's gate fails what is out of range."""
    for reading in ("paper", "percent"):
        judge, _, _ = rl_reward_functions(ARITHMETIC_TASK, "rlcr", reading=reading)
        texts = [text for text, _ in CASES.values()]
        batch = judge.assess(None, texts, ["4"] * len(texts))
        assert [c.value for c in batch.confidences] == [parse_confidence(t, reading) for t in texts]
        assert [not c.out_of_range for c in batch.confidences] == [name not in ("1.67", "85%") for name in CASES]


def test_correctness_is_the_verdict_alone():
    judge, terms, weights = rl_reward_functions(ARITHMETIC_TASK, "correctness")
    texts = [text for text, _ in CASES.values()]
    assert terms == [judge] and weights is None and judge.__name__ == "correctness"
    assert terms[0](None, texts, ["4"] * len(texts)) == [float(correct) for _, correct in CASES.values()]


GRID = [i / 20 for i in range(21)]


def test_brier_term_is_a_proper_scoring_rule():
    """Under accuracy p the expected term p * r(right, q) + (1 - p) * r(wrong, q) is maximized at q = p."""
    for p in GRID:
        expected = [p * brier_term(True, q) + (1 - p) * brier_term(False, q) for q in GRID]
        assert GRID[expected.index(max(expected))] == pytest.approx(p)


def test_car_term_separates_right_from_wrong_and_punishes_confident_errors_hardest():
    for margin in (0.1, 0.5):
        right = [car_term(True, q, margin) for q in GRID]
        wrong = [car_term(False, q, margin) for q in GRID]
        assert min(right) - max(wrong) == pytest.approx(margin)  # every right answer above every wrong one
        assert all(a > b for a, b in pairwise(wrong))  # the more confident the error, the lower
        assert wrong[-1] == min(wrong) == 0.0 and max(right) == 1.0  # in [0, 1], like the Brier term it replaces
        for p in GRID:  # and still proper: honesty maximizes the expected reward
            expected = [p * car_term(True, q, margin) + (1 - p) * car_term(False, q, margin) for q in GRID]
            assert GRID[expected.index(max(expected))] == pytest.approx(p)


@pytest.mark.parametrize("rule", ["correctness", "rlcr", "car"])
def test_a_short_grpo_run_of_each_reward(model, tokenizer, tmp_path, rule):
    trainer = toy_trainer(model, tokenizer, tmp_path, backbone="grpo", rl_reward=rule, max_steps=1)
    trainer.train()
    logged = trainer.state.log_history[0]
    rows = read_rollouts(tmp_path)
    assert len(rows) == 8
    groups = defaultdict(list)
    weights = {"correctness": [1.0], "rlcr": [0.5] * 3, "car": [0.5] * 3}[rule]
    for row in rows:
        groups[row["uid"]].append(row)
        terms = list(row["reward_terms"].values())
        assert row["reward"] == pytest.approx(sum(w * t for w, t in zip(weights, terms, strict=True)))
        if rule == "correctness":
            assert terms == [float(row["correct"])]
        else:
            assert terms[1] == (terms[0] * float(row["correct"]))  # accuracy, gated by the format
        assert row["target"] == row["completion"]  # no CaOPD rewrite in the RL baselines
    assert logged["caopd/p_acc_mean"] == pytest.approx(
        sum(sum(r["correct"] for r in g) / len(g) for g in groups.values()) / len(groups)
    )
    for name in rows[0]["reward_terms"]:  # TRL logs each term
        assert logged[f"rewards/{name}/mean"] == pytest.approx(sum(r["reward_terms"][name] for r in rows) / len(rows))
    assert logged["reward"] == pytest.approx(sum(r["reward"] for r in rows) / len(rows))


def test_grpo_resumes_from_latest_through_the_cli(tmp_path):
    """Resumed with its held-out evaluations: the history and the final card hold the one of each step."""
    model_dir = save_tiny_model(tmp_path / "tiny")
    flags = ["--backbone", "grpo", "--rl_reward", "rlcr", "--model_name", str(model_dir), "--no_wandb"]
    flags += ["--dataset_name", "arithmetic", "--output_dir", str(tmp_path / "run"), "--num_prompts_per_batch", "2"]
    flags += ["--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "16"]
    flags += ["--max_prompt_length", "512", "--save_steps", "1", "--warmup_steps", "0", "--save_rollouts"]
    flags += ["--eval_steps", "1", "--eval_split_size", "2"]
    assert main.main([*flags, "--max_steps", "1"]) == 0
    assert main.main([*flags, "--max_steps", "2", "--resume_from_checkpoint", "latest"]) == 0
    assert [entry["step"] for entry in read_history(tmp_path / "run")] == [1, 2]
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| method | GRPO with the rlcr reward (an RL baseline of the paper) |" in card
    assert card.count("\n| 1 | ") == card.count("\n| 2 | ") == 1 and (tmp_path / "run" / CURVE_NAME).is_file()
    assert sorted({row["step"] for row in read_rollouts(tmp_path / "run")}) == [0, 1]
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    trained = [entry for entry in state["log_history"] if "eval_ece" not in entry]
    assert state["global_step"] == 2 and "rewards/brier/mean" in trained[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rl_reward", "rlcr"], "--rl_reward is a setting of --backbone grpo"),
        (["--backbone", "sdpo", "--car_margin", "0.2"], "--car_margin is a setting of --backbone grpo"),
        (["--backbone", "grpo", "--rl_reward", "brier"], "--rl_reward must be one of"),
        (
            ["--backbone", "grpo", "--teacher_context_mode", "demo"],
            "--teacher_context_mode is a setting of --backbone sdft",
        ),
        (["--backbone", "grpo", "--self_consistency"], "--self_consistency is a setting of --backbone sdft / sdpo"),
        (["--backbone", "grpo", "--distillation_weight", "0.5"], "--distillation_weight is a setting of --backbone"),
        (["--backbone", "grpo", "--car_margin", "1.5"], "--car_margin must lie in [0, 1)"),
    ],
)
def test_bad_combinations_are_one_line(tmp_path, capsys, argv, message):
    flags = ["--output_dir", str(tmp_path), "--model_name", "smollm2", "--dataset_name", "arithmetic", "--no_wandb"]
    assert main.main([*flags, *argv]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "scale_rewards", "weights"),
    [
        (["--rl_reward", "rlcr"], "none", None),  # RLCR's configuration; weights come with its terms
        (["--rl_reward", "car"], "none", None),
        (["--rl_reward", "rlcr", "--scale_rewards", "group"], "group", None),  # the user's flag wins
        (["--rl_reward", "correctness"], "group", None),  # plain GRPO: TRL's default
    ],
)
def test_rlcr_configuration_reaches_trl(tmp_path, argv, scale_rewards, weights):
    flags = ["--output_dir", str(tmp_path), "--model_name", "smollm2", "--dataset_name", "arithmetic", "--no_wandb"]
    config = main.build_config(main.parse_args([*flags, "--backbone", "grpo", *argv]), world_size=1)
    assert config.scale_rewards == scale_rewards and config.reward_weights == weights
    assert config.confidence_reading == "paper"

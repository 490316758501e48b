"""bench/reproduce.py: both arms get identical settings, the targets are judged right, and a run resumes."""

import importlib.util
import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, covers

_spec = importlib.util.spec_from_file_location("reproduce", ROOT / "bench" / "reproduce.py")
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def test_the_arms_differ_only_in_the_flags_that_make_them(tmp_path):
    args = reproduce.build_parser().parse_args(["--output_dir", str(tmp_path)])
    command = {arm: reproduce.train_command(args, arm) for arm in reproduce.ARMS[1:]}
    for plain, calibrated in (("sdft", "caopd"), ("sdpo", "caopd_sdpo")):
        assert {a for a in command[plain] if a not in command[calibrated]} == {
            "--no_empirical_calibration",
            str(tmp_path / plain),
        }
        assert [a for a in command[calibrated] if a not in command[plain]] == [str(tmp_path / calibrated)]
    for rl in ("rlcr", "car"):
        assert {a for a in command[rl] if a not in command["grpo"]} == {rl, str(tmp_path / rl)}
    rates = {arm: c.pop(c.index("--learning_rate") + 1) for arm, c in command.items()}
    assert rates == {arm: "0.0001" if arm in reproduce.SDPO_ARMS else "0.0003" for arm in command}  # stable SDPO
    shared = {
        arm: c[: c.index("--output_dir")] + c[c.index("--max_steps") : c.index("--no_wandb")]
        for arm, c in command.items()
    }
    assert len({tuple(c) for c in shared.values()}) == 1  # model, task, budget, rollouts per step and seed alike
    evals = [reproduce.eval_command(args, arm) for arm in reproduce.ARMS]
    assert len({tuple(c[c.index("--split") :]) for c in evals}) == 1  # same questions and sampling for all
    caopd = command["caopd"]
    assert caopd[caopd.index("--teacher_instruction") + 1] == reproduce.TEACHER_INSTRUCTION
    assert all("--teacher_instruction" not in command[arm] for arm in ("sdpo", "caopd_sdpo", "grpo", "rlcr", "car"))


def test_paper_teacher_instruction_leaves_the_flag_out(tmp_path):
    args = reproduce.build_parser().parse_args(["--output_dir", str(tmp_path), "--paper_teacher_instruction"])
    assert all("--teacher_instruction" not in reproduce.train_command(args, arm) for arm in ("sdft", "caopd"))
    with pytest.raises(SystemExit):  # both wordings at once: argparse names the conflict
        reproduce.build_parser().parse_args(["--paper_teacher_instruction", "--teacher_instruction", "Go."])


def _metrics(accuracy, ece, ocg, spr, mean_confidence):
    return {"accuracy": accuracy, "ece": ece, "overconfidence_gap": ocg, "spr": spr, "mean_confidence": mean_confidence}


@pytest.mark.parametrize(
    ("caopd", "holds"),
    [
        (_metrics(0.40, 0.20, 0.05, 0.60, 0.45), [True, True, True, True, True, True]),
        (_metrics(0.37, 0.21, -0.11, 0.50, 0.30), [True, False, False, True, False, True]),
        (_metrics(0.01, 0.01, 0.00, 0.90, 0.01), [False, True, True, True, False, True]),  # collapsed: flagged
    ],
)
def test_target_checks(caopd, holds):
    runs = {"base": _metrics(0.3, 0.1, 0.0, 0.2, 0.5), "sdft": _metrics(0.40, 0.40, 0.5, 0.3, 0.9), "caopd": caopd}
    assert [ok for _, ok, _ in reproduce.target_checks(runs)] == holds


def test_all_eight_arms_plan_checked_stages_and_fourteen_checks(tmp_path):
    """The whole plan's flags pass each stage's own parser, and the summary judges 6 directions per backbone and the
    capability tax twice (the end-to-end run below trains two arms only: each backbone trains through main.py in its
    own tests)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from stages import check_stage_flags

    args = reproduce.build_parser().parse_args(["--output_dir", str(tmp_path)])
    plan = reproduce.stages(args)
    check_stage_flags(plan)
    assert [name for name, _ in plan] == ["eval_base"] + [
        f"{stage}_{arm}" for arm in reproduce.ARMS[1:] for stage in ("train", "eval")
    ] + ["compare"]
    runs = {arm: _metrics(0.4, 0.2, 0.05, 0.6, 0.45) for arm in reproduce.ARMS}
    assert len(reproduce.target_checks(runs)) == 14


ARMS_RUN = ["base", "sdft", "caopd"]


@covers("bench/reproduce.py")
def test_end_to_end_on_a_tiny_model_then_resume(tmp_path):
    from tiny_model import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--output_dir", str(out)]
    command += ["--model_name", str(model_dir), "--max_steps", "1", "--num_generations", "2"]
    command += ["--num_questions", "3", "--num_samples", "2", "--n_bootstrap", "0", "--arms", "sdft", "caopd"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    labels = [reproduce.LABELS[arm] for arm in ARMS_RUN]
    assert all(f"| {label} |" in summary for label in labels)
    assert summary.count("- [") == 6  # one line per check of the SDFT backbone
    assert "| level | questions | base acc / conf |" in summary
    assert (out / "compare.png").stat().st_size > 0
    table = json.loads((out / "compare.json").read_text())
    assert list(table) == labels
    for arm, label in zip(ARMS_RUN, labels):
        metrics = json.loads((out / "eval" / arm / "metrics.json").read_text())
        assert table[label]["ece"]["value"] == metrics["ece"]
    for arm, calibrated in (("sdft", False), ("caopd", True)):
        config = yaml.safe_load((out / arm / "caopd_config.yaml").read_text())
        assert config["trainer"]["empirical_calibration"] is calibrated
        rollout = json.loads((out / arm / "rollouts" / "rank0.jsonl").read_text().splitlines()[0])
        assert rollout["teacher_context"].endswith(f"\n\n{reproduce.TEACHER_INSTRUCTION}\n")
        assert ("Note: The empirical confidence" in rollout["teacher_context"]) is calibrated
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 2 * len(ARMS_RUN)
    changed = subprocess.run([*command, "--learning_rate", "1e-4"], capture_output=True, text=True, cwd=ROOT)
    assert changed.returncode != 0 and "stage train_sdft in" in changed.stderr and "another command" in changed.stderr
    rescored = subprocess.run([*command, "--rescore"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    for arm in ARMS_RUN:  # the evaluation read under the paper's reading: re-reading it changes nothing
        metrics = json.loads((out / "eval" / arm / "metrics.json").read_text())
        again = json.loads((out / "rescored" / "paper" / "eval" / arm / "metrics.json").read_text())
        assert metrics["confidence_reading"] == again["confidence_reading"] == "paper"
        assert {k: again[k] for k in ("accuracy", "ece", "brier_score")} == {
            k: metrics[k] for k in ("accuracy", "ece", "brier_score")
        }


def test_interval_lines_say_whether_caopd_and_sdft_intervals_are_disjoint():
    runs = {
        "caopd": {"bootstrap_95ci": {"ece": [0.05, 0.10], "accuracy": [0.30, 0.40]}},
        "sdft": {"bootstrap_95ci": {"ece": [0.30, 0.40], "accuracy": [0.35, 0.45]}},
    }
    lines = reproduce.interval_lines(runs)
    assert lines == [
        "- accuracy: CaOPD (SDFT) [0.300, 0.400] vs SDFT [0.350, 0.450]: overlapping",
        "- ece: CaOPD (SDFT) [0.050, 0.100] vs SDFT [0.300, 0.400]: disjoint",
    ]


def test_stated_metrics_keep_only_the_responses_that_state_a_confidence(tmp_path):
    answers = {
        "base": [(True, None), (False, None)],
        "sdft": [(True, 1.0), (False, 1.0), (False, None), (True, None)],
        "caopd": [(True, 0.5), (False, 0.5), (True, None), (False, 0.25)],
    }
    items = {
        arm: [{"correct": correct, "confidence": confidence} for correct, confidence in pairs]
        for arm, pairs in answers.items()
    }
    stated = reproduce.stated_metrics(items, n_bootstrap=0, seed=0)
    assert stated["sdft"]["mean_confidence"] == 1.0 and stated["sdft"]["overconfidence_gap"] == 0.5
    assert stated["caopd"]["accuracy"] == pytest.approx(1 / 3) and stated["caopd"]["share"] == 0.75
    assert reproduce.stated_confidence_table(stated).splitlines()[2:] == [
        "| base | 0.000 | - | - | - | - | 0 |",
        "| SDFT | 0.500 | 0.500 | 1.000 | 0.500 | +0.500 | 2 |",
        "| CaOPD (SDFT) | 0.750 | 0.333 | 0.417 | 0.083 | +0.083 | 3 |",  # ECE: only the 0.25 bin is off
    ]


def test_rescore_reads_saved_responses_under_each_reading(tmp_path):
    """Saved responses, nothing trained: the paper's reading clips "1.50" to 1.0, the percent reading takes 1.5 %."""
    responses = {"base": ["Answer: 3\nConfidence: 1.50", "Answer: 4\nConfidence: 0.5"], "sdft": ["Answer: 3"] * 2}
    for arm, texts in responses.items():
        items = [
            {"item_id": 0, "sample_index": s, "response": t, "correct": s == 0, "confidence": None}
            for s, t in enumerate(texts)
        ]
        (tmp_path / "eval" / arm).mkdir(parents=True)
        (tmp_path / "eval" / arm / "inference.json").write_text(json.dumps(items))
    argv = ["--output_dir", str(tmp_path), "--arms", "sdft", "--n_bootstrap", "0", "--rescore"]
    assert reproduce.main(argv) == 0
    for reading, base_confidences in (("paper", [1.0, 0.5]), ("percent", [0.015, 0.5])):
        folder = tmp_path / "rescored" / reading
        base = json.loads((folder / "eval" / "base" / "metrics.json").read_text())
        assert base["mean_confidence"] == pytest.approx(sum(base_confidences) / 2)
        assert base["confidence_reading"] == reading and base["confidence_out_of_range_share"] == 0.5
        table = (folder / "compare.md").read_text()
        assert f"| {reading} |" in table.splitlines()[2] and (folder / "summary.md").exists()
    assert not (tmp_path / "stages").exists()  # nothing was run


def test_rescore_without_saved_responses_is_one_line(tmp_path, capsys):
    assert reproduce.main(["--output_dir", str(tmp_path), "--rescore"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: arm base")
    (tmp_path / "eval" / "base").mkdir(parents=True)
    (tmp_path / "eval" / "base" / "inference.json").write_text(json.dumps([{"item_id": 0, "response": "x"}]))
    assert reproduce.main(["--output_dir", str(tmp_path), "--rescore"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "item 0 needs a string 'response' and a true/false 'correct'" in err[0]

"""The paper's other experiments, one script each, run end to end at CPU scale on a tiny model: their stages, and
that what they print is computed from the evaluations they ran."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_DATA, covers
from tiny_model import save_tiny_model


def _run(script: str, *argv: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "bench" / script), *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def _needs_shared_sets():
    if not (SHARED_DATA / "caopd_eval").is_dir():
        pytest.skip(f"the shared tool-use and science sets are not at {SHARED_DATA / 'caopd_eval'}")


@pytest.mark.slow
@covers("bench/k_ablation.py")
def test_k_ablation_tabulates_each_k_from_its_evaluation(tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "k"
    flags = ["--output_dir", str(out), "--cpu_scale", "--quick", "--model_name", str(model), "--max_steps", "1"]
    flags += ["--ks", "2"]  # one K: each K is its own stage, tabulated by the same code
    finished = _run("k_ablation.py", *flags)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = json.loads((out / "k_ablation.json").read_text())
    assert list(rows) == ["2"]
    for k, row in rows.items():
        metrics = json.loads((out / "eval" / f"k{k}" / "metrics.json").read_text())
        items = json.loads((out / "eval" / f"k{k}" / "inference.json").read_text())
        assert row["ece"] == metrics["ece"] and row["accuracy"] == metrics["accuracy"]
        stated = sum(item["confidence"] is not None for item in items) / len(items)
        assert sum(row["histogram"]) == pytest.approx(stated)
        assert f"| {k} | {metrics['accuracy']:.3f} | {metrics['ece']:.3f} |" in finished.stdout
        config = (out / f"k{k}" / "caopd_config.yaml").read_text()
        assert f"num_generations: {k}" in config
    assert (out / "k_ablation.png").stat().st_size > 0
    assert _run("k_ablation.py", *flags, "--ks", "0").returncode == 2  # argparse: --ks must be positive


@pytest.mark.slow
@covers("bench/ood.py")
def test_ood_trains_on_tool_use_and_evaluates_on_science(tmp_path):
    _needs_shared_sets()
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "ood"
    flags = ["--output_dir", str(out), "--cpu_scale", "--quick", "--model_name", str(model), "--max_steps", "1"]
    finished = _run("ood.py", *flags, "--arms", "caopd")
    assert finished.returncode == 0, finished.stderr[-3000:]
    table = json.loads((out / "compare.json").read_text())
    assert list(table) == ["base", "caopd"]
    assert "dataset_name: tooluse" in (out / "caopd" / "caopd_config.yaml").read_text()
    for arm in ("base", "caopd"):
        metrics = json.loads((out / "eval" / arm / "metrics.json").read_text())
        assert metrics["settings"]["task"] == "science" and table[arm]["ece"]["value"] == metrics["ece"]


@pytest.mark.slow
@covers("bench/continual.py")
def test_continual_trains_science_from_the_tool_use_model_and_evaluates_both(tmp_path):
    _needs_shared_sets()
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "continual"
    flags = ["--output_dir", str(out), "--cpu_scale", "--quick", "--model_name", str(model), "--max_steps", "1"]
    finished = _run("continual.py", *flags, "--arms", "caopd")
    assert finished.returncode == 0, finished.stderr[-3000:]
    table = json.loads((out / "compare.json").read_text())
    expected = ["base/tooluse", "base/science"]
    expected += [f"caopd/stage{n}/{d}" for n in (1, 2) for d in ("tooluse", "science")]
    assert list(table) == expected
    stage2 = (out / "caopd" / "stage2" / "caopd_config.yaml").read_text()
    assert f"model_name_or_path: {out / 'caopd' / 'stage1'}" in stage2 and "dataset_name: science" in stage2
    trained = {json.loads(line)["prompt"][-1]["content"] for line in open(out / "data" / "science_train.jsonl")}
    tested = {json.loads(line)["prompt"][-1]["content"] for line in open(out / "data" / "science_test.jsonl")}
    assert trained and tested and not trained & tested  # no question both trained on and evaluated


def test_a_stage_cut_short_resumes_only_under_the_command_it_began_with(tmp_path):
    """A stage that failed (a kill, say) left no done-marker; re-running it with another command (another learning
    rate) would resume its checkpoints under new settings, so it is refused; the same command runs again."""
    sys.path.insert(0, str(ROOT / "bench"))
    from stages import run_stage

    failing = [sys.executable, "-c", "import sys; sys.exit(3)", "--learning_rate", "3e-4"]
    with pytest.raises(SystemExit, match="failed with exit code 3"):
        run_stage("train_x", failing, tmp_path, force=False)
    changed = [*failing[:-1], "1e-4"]
    with pytest.raises(SystemExit, match="was begun \\(and cut short\\) with another command"):
        run_stage("train_x", changed, tmp_path, force=False)
    fixed = [sys.executable, "-c", "pass", "--learning_rate", "3e-4"]
    assert run_stage("train_x", fixed, tmp_path, force=True) is not None  # --force starts it over
    assert run_stage("train_x", fixed, tmp_path, force=False) is None  # done: skipped

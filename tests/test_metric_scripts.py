"""The metric scripts on inference files whose verdicts and confidences are known in advance."""

import json
import random
import subprocess
import sys

import pytest
from conftest import ROOT, covers
from test_metrics import _reference

GOLD = [{"Action": "getWeather", "Action_Input": '{"city": "Paris"}'}]


def _run(script, items, tmp_path, *extra):
    source, target = tmp_path / "inference.json", tmp_path / "metrics.json"
    source.write_text(json.dumps(items))
    command = [sys.executable, str(ROOT / "eval" / script), "--input", str(source), "--output", str(target)]
    result = subprocess.run([*command, "--n_bootstrap", "50", *extra], capture_output=True, text=True, timeout=120)
    return result, (json.loads(target.read_text()) if target.exists() else None)


def _tooluse_items(seed):
    rng = random.Random(seed)
    items, correct, confidence = [], [], []
    for _ in range(40):
        right = rng.random() < 0.5
        stated = rng.choice([None, 0.1, 0.5, 0.85, 1.0])
        city = "Paris" if right else "Rome"
        response = f'Thought: I can do this.\nAction: getWeather\nAction Input: {{"city": "{city}"}}'
        if stated is not None:
            response += f"\nConfidence: {stated}"
        items.append({"response": response, "golden_answer": GOLD})
        correct.append(right)
        confidence.append(stated)
    return items, correct, confidence


@pytest.mark.parametrize("seed", [0, 1])
@covers("eval/run_eval_tooluse.py")
def test_tooluse_metrics_match_an_independent_computation(tmp_path, seed):
    items, correct, confidence = _tooluse_items(seed)
    result, metrics = _run("run_eval_tooluse.py", items, tmp_path)
    assert result.returncode == 0, result.stderr
    for key, value in _reference(correct, confidence, 10).items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    expected_keys = {"accuracy", "brier_score", "ece", "spr", "overconfidence_gap", "mean_confidence", "auroc"}
    expected_keys |= {"confidence_format_adherence", "n_samples", "n_bins", "bin_stats", "valid_confidence_only"}
    assert expected_keys <= set(metrics)
    assert metrics["confidence_format_adherence"] == pytest.approx(sum(c is not None for c in confidence) / 40)


@covers("eval/run_eval_chemistry.py")
def test_chemistry_metrics_and_answer_parse_rate(tmp_path):
    items = [
        {"response": "<answer>\nB\n</answer>\nConfidence: 0.9", "golden_answer": [{"Answer": "B"}]},
        {"response": "<answer>C</answer>\nConfidence: 0.8", "golden_answer": [{"Answer": "B"}]},
        {"response": "I think B. Confidence: 0.7", "golden_answer": [{"Answer": "B"}]},
        {"response": "<answer>A</answer>\nConfidence: 1.2", "golden_answer": [{"Answer": "A"}]},
    ]
    # The paper's reading (default) reads the same-line statement and clips 1.2; the percent reading reads only
    # labelled lines, and 1.2 as 1.2 %.
    for reading, stated in (("paper", [0.9, 0.8, 0.7, 1.0]), ("percent", [0.9, 0.8, None, 0.012])):
        out = tmp_path / reading
        out.mkdir()
        result, metrics = _run("run_eval_chemistry.py", items, out, "--n_bins", "5", "--confidence_reading", reading)
        assert result.returncode == 0, result.stderr
        for key, value in _reference([True, False, False, True], stated, 5).items():
            assert metrics[key] == pytest.approx(value, abs=1e-12), key
        assert metrics["answer_parse_rate"] == 0.75 and metrics["n_bins"] == 5
        assert metrics["confidence_reading"] == reading and metrics["confidence_out_of_range_share"] == 0.25


def test_malformed_items_are_reported_not_fatal(tmp_path):
    items = [
        {"response": "Action: a\nAction Input: {}", "golden_answer": [{"Action": "a", "Action_Input": "{broken"}]},
        {"response": "Action: a\nAction Input: {}", "golden_answer": "not a list"},
        {"golden_answer": GOLD},
    ]
    result, metrics = _run("run_eval_tooluse.py", items, tmp_path)
    assert result.returncode == 0, result.stderr
    assert metrics["accuracy"] == 0.0 and metrics["n_samples"] == 3
    assert [p.split(":")[0] for p in metrics["malformed_items"]] == ["item 0", "item 1", "item 2"]
    assert "not valid JSON" in metrics["malformed_items"][0]


def test_unreadable_input_is_one_error_line(tmp_path):
    (tmp_path / "bad.json").write_text("{oops")
    command = [sys.executable, str(ROOT / "eval" / "run_eval_tooluse.py"), "--input", str(tmp_path / "bad.json")]
    result = subprocess.run([*command, "--output", str(tmp_path / "m.json")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: --input") and "Traceback" not in result.stderr
    assert not (tmp_path / "m.json").exists()

"""Evaluation on a checkpoint written by the training CLI, offline on CPU, and the comparison command."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, covers
from PIL import Image

import main

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    from tiny_model import save_tiny_model

    base = tmp_path_factory.mktemp("train")
    model_dir = save_tiny_model(base / "tiny")
    output = base / "run"
    argv = ["--output_dir", str(output), "--model_name", str(model_dir), "--dataset_name", "science"]
    argv += ["--train_data", str(FIXTURES / "science_rows.jsonl"), "--no_wandb", "--max_steps", "1"]
    argv += ["--num_prompts_per_batch", "2", "--num_generations", "2", "--per_device_train_batch_size", "4"]
    argv += ["--max_completion_length", "24", "--max_prompt_length", "256"]
    assert main.main(argv) == 0
    return output


def _evaluate(script, *argv):
    command = [sys.executable, str(ROOT / script), *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}  # where the example's own verifier lives
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@covers("eval_science.py")
def test_eval_science_on_a_trained_checkpoint(trained_checkpoint, tmp_path):
    out = tmp_path / "eval"
    result = _evaluate(
        "eval_science.py", "--model_path", str(trained_checkpoint), "--data", str(FIXTURES / "science_rows.jsonl"),
        "--output_dir", str(out), "--num_samples", "3", "--max_new_tokens", "12", "--n_bootstrap", "20",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    items = json.loads((out / "inference.json").read_text())
    assert len(items) == 2 * 3
    assert [(i["item_id"], i["sample_index"]) for i in items] == [(q, s) for q in range(2) for s in range(3)]
    keys = {"prompt", "response", "golden_answer", "correct", "confidence", "format_ok", "sample_index", "item_id"}
    assert keys <= set(items[0])
    assert items[0]["golden_answer"] == [{"Answer": "B"}]
    assert items[0]["prompt"][-1]["content"].endswith("no other words or explanation.")  # the trained format
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 6 and "answer_parse_rate" in metrics
    cut = [item["cut_by_length"] for item in items]
    assert all(isinstance(flag, bool) for flag in cut) and metrics["length_cut_share"] == sum(cut) / len(cut)
    assert Image.open(out / "reliability.png").size[0] > 100


@covers("eval_tooluse.py")
def test_no_confidence_instruction_flag_and_greedy(trained_checkpoint, tmp_path):
    out = tmp_path / "eval"
    result = _evaluate(
        "eval_tooluse.py", "--model_path", str(trained_checkpoint), "--data", str(FIXTURES / "tooluse_rows.jsonl"),
        "--output_dir", str(out), "--temperature", "0", "--num_samples", "1", "--max_new_tokens", "8", "--limit", "2",
        "--no_confidence_instruction", "--n_bootstrap", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    items = json.loads((out / "inference.json").read_text())
    assert len(items) == 2 and "Confidence:" not in items[0]["prompt"][0]["content"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model_path", "smollm2", "--data", "/nope"], "not found"),
        (["--model_path", "smollm2", "--num_samples", "0"], "--num_samples: must be a positive integer"),
        (["--model_path", "/tmp", "--data", str(FIXTURES / "tooluse_rows.jsonl")], "no config.json"),
    ],
)
def test_eval_errors_are_one_line(argv, message):
    result = _evaluate("eval_tooluse.py", *argv)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@covers("eval/compare.py")
def test_compare_writes_a_table_and_an_overlaid_diagram(tmp_path):
    from caopd.metrics import calibration_metrics

    paths = []
    for name, confidence, reading, task in (("base", 0.9, "percent", "science"), ("caopd", 0.5, "paper", "tooluse")):
        path = tmp_path / name / "metrics.json"
        path.parent.mkdir()
        metrics = calibration_metrics([True, False, True, False], [confidence] * 4, n_bootstrap=10)
        metrics |= {"confidence_reading": reading, "confidence_out_of_range_share": 0.25, "task": task}
        path.write_text(json.dumps(metrics))
        paths.append(str(path))
    command = [sys.executable, str(ROOT / "eval" / "compare.py"), *paths]
    command += ["--output_md", str(tmp_path / "t.md"), "--output_png", str(tmp_path / "c.png")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "t.md").read_text().splitlines()
    assert table[0].startswith("| run | acc | ECE |") and table[2].startswith("| base | 0.500")
    assert table[3].startswith("| caopd | 0.500") and "| 0.000 [" in table[3]  # CaOPD-like run: ECE 0
    assert "| out of range | reading |" in table[0] and table[3].endswith("| 0.250 | paper | 4 |")
    assert "warning: the runs' confidences were read under different readings (paper, percent)" in result.stderr
    assert "warning: the runs were evaluated on different tasks (science, tooluse)" in result.stderr
    assert Image.open(tmp_path / "c.png").format == "PNG"


@covers("eval_arithmetic.py")
def test_eval_arithmetic_defaults_to_generated_held_out_questions(trained_checkpoint, tmp_path):
    from caopd.tasks.arithmetic import generate_questions, split_of, verify_arithmetic

    out = tmp_path / "eval"
    result = _evaluate(
        "eval_arithmetic.py", "--model_path", str(trained_checkpoint), "--output_dir", str(out),
        "--num_questions", "3", "--num_samples", "2", "--max_new_tokens", "6", "--n_bootstrap", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    items = json.loads((out / "inference.json").read_text())
    expected = generate_questions(3, seed=0, split="test")
    assert [i["prompt"] for i in items[::2]] == expected["prompt"]
    assert [i["golden_answer"] for i in items[::2]] == [json.loads(t) for t in expected["ground_truth"]]
    for item in items:
        question = item["prompt"][-1]["content"].removeprefix("What is ").split("?")[0]
        assert split_of(question) == "test"  # never a training question
        assert item["correct"] == verify_arithmetic(item["response"], item["golden_answer"])
    assert json.loads((out / "metrics.json").read_text())["n_samples"] == 6


def test_eval_arithmetic_rejects_dropping_the_confidence_instruction():
    result = _evaluate("eval_arithmetic.py", "--model_path", "smollm2", "--no_confidence_instruction")
    assert result.returncode == 2 and "worked examples carry confidence" in result.stderr


def test_eval_arithmetic_asking_for_more_questions_than_the_split_has_is_one_line():
    result = _evaluate("eval_arithmetic.py", "--model_path", "smollm2", "--num_questions", "100000")
    assert result.returncode == 2 and "ask for at most" in result.stderr and "Traceback" not in result.stderr


def test_evaluation_defaults_are_the_papers_validation_setting():
    from caopd.evaluation import build_parser
    from caopd.generation import Sampling

    args = build_parser("tooluse").parse_args(["--model_path", "m"])
    assert (args.temperature, args.top_p, args.num_samples, args.max_new_tokens) == (0.6, 0.95, None, 8192)
    assert Sampling().num_samples == 8  # what --num_samples resolves to when sampling (greedy: 1)
    assert not args.enable_thinking and args.max_prompt_length is None


def test_overlong_evaluation_prompts_are_one_line(trained_checkpoint, tmp_path):
    argv = ["--model_path", str(trained_checkpoint), "--data", str(FIXTURES / "tooluse_rows.jsonl")]
    result = _evaluate("eval_tooluse.py", *argv, "--max_prompt_length", "16", "--output_dir", str(tmp_path / "e"))
    assert result.returncode == 2 and "prompts are longer than --max_prompt_length 16" in result.stderr
    assert not (tmp_path / "e").exists()


@covers("eval_custom.py")
def test_eval_custom_uses_the_training_loader_and_verifier(trained_checkpoint, tmp_path):
    out = tmp_path / "eval"
    data = ROOT / "examples" / "capitals.jsonl"
    result = _evaluate(
        "eval_custom.py", "--model_path", str(trained_checkpoint), "--data", str(data),
        "--verifier", "capitals_verifier:names_the_city", "--output_dir", str(out), "--limit", "3",
        "--num_samples", "2", "--max_new_tokens", "6", "--n_bootstrap", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    items = json.loads((out / "inference.json").read_text())
    assert len(items) == 6 and items[0]["golden_answer"] == "Paris"
    assert items[0]["prompt"][-1]["content"].endswith("no other words or explanation.")  # the training loader's
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"aurc", "accuracy_at_coverage_50", "ece_equal_mass", "selective_accuracy"} <= set(metrics)
    assert (out / "reliability.png").is_file() and (out / "selective.png").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--verifier", "nosuch:thing"], "cannot import it"),
        (["--verifier", "regex:("], "not a valid regular expression"),
        (["--verifier", "exact_match", "--data", str(FIXTURES / "tooluse_rows.jsonl")], "lacks column 'answer'"),
        (["--verifier", "numeric", "--tooluse_match", "first_call"], "--tooluse_match applies to tool use"),
    ],
)
def test_eval_custom_bad_data_or_spec_is_one_line(argv, message, tmp_path):
    data = ["--data", str(ROOT / "examples" / "capitals.jsonl")] if "--data" not in argv else []
    env_argv = ["--model_path", "smollm2", *data, *argv, "--output_dir", str(tmp_path / "e"), "--max_new_tokens", "4"]
    result = _evaluate("eval_custom.py", *env_argv)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "e").exists()


def test_results_of_a_checkpoint_go_beside_it_not_into_it(tmp_path):
    """A run deletes its older checkpoint-N folders: the default output of one lies next to it."""
    from caopd.evaluation import _default_output

    checkpoint = tmp_path / "run" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    assert _default_output(str(checkpoint), str(checkpoint), "science") == str(
        checkpoint.parent / "eval_science_checkpoint-4"
    )
    assert _default_output(str(tmp_path / "run"), "x", "science") == str(tmp_path / "run" / "eval_science")

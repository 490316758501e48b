"""data/prepare_science.py on a small self-written sample in SciKnowEval's raw format."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_DATA, covers
from datasets import load_from_disk

from caopd.tasks import get_task

SCRIPT = ROOT / "data" / "prepare_science.py"


def _raw(index, level="L3", domain="Chemistry", kind="mcq-4-choices"):
    return {
        "question": f"Which compound is number {index}?",
        "choices": {"label": ["A", "B", "C", "D"], "text": [f"c{index}a", f"c{index}b", f"c{index}c", f"c{index}d"]},
        "answerKey": "ABCD"[index % 4],
        "type": kind,
        "domain": domain,
        "details": {"level": level, "task": "test"},
    }


def _prepare(tmp_path, lines, *extra):
    source = tmp_path / "raw.jsonl"
    source.write_text("\n".join(lines) + "\n")
    command = [sys.executable, str(SCRIPT), "--input", str(source), "--output", str(tmp_path / "out"), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@covers("data/prepare_science.py")
def test_splits_formats_and_filtering(tmp_path):
    lines = [json.dumps(_raw(i)) for i in range(40)]
    lines += [json.dumps(_raw(99, level="L1")), json.dumps(_raw(98, domain="Biology")), json.dumps(_raw(97, kind="tf"))]
    lines += ["not json"]
    result = _prepare(tmp_path, lines)
    assert result.returncode == 0, result.stderr
    assert "1 line(s) are not JSON" in result.stderr
    sizes = {name: len(load_from_disk(str(tmp_path / "out" / name))) for name in ("train", "validation", "test")}
    assert sizes == {"train": 30, "validation": 2, "test": 8}
    questions = [set(load_from_disk(str(tmp_path / "out" / n))["answer"]) for n in sizes]
    assert all(q <= set("ABCD") for q in questions)
    train = load_from_disk(str(tmp_path / "out" / "train"))
    user = train[0]["prompt"][1]["content"]
    assert user.startswith("Which compound is number") and "\n\nA: c" in user and user.count("\n") == 5
    rows = get_task("science").load(str(tmp_path / "out" / "train"))
    assert all(get_task("science").verify(r["demonstration"], r["ground_truth"]) for r in rows)
    again = _prepare(tmp_path, lines)  # same seed, same split
    assert again.returncode == 0
    assert load_from_disk(str(tmp_path / "out" / "train"))["prompt"] == train["prompt"]


@pytest.mark.skipif(not (SHARED_DATA / "caopd_eval").is_dir(), reason="../shared/data/caopd_eval is not present")
def test_prompts_have_the_shape_of_the_shared_converted_set():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_science", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shared = load_from_disk(str(SHARED_DATA / "caopd_eval" / "science_eval"))[0]["prompt"]
    assert module.SYSTEM_PROMPT == shared[0]["content"]
    assert shared[1]["content"].split("\n\nA: ")[1].count("\n") == 3  # four lettered options, as written here


def test_missing_input_says_where_to_get_it(tmp_path):
    command = [sys.executable, str(SCRIPT), "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "hicai-zju/SciKnowEval" in result.stderr and "Traceback" not in result.stderr


def test_no_matching_rows_is_an_error(tmp_path):
    result = _prepare(tmp_path, [json.dumps(_raw(1, level="L1"))])
    assert result.returncode == 2 and "no Chemistry L3" in result.stderr

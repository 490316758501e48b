"""Task loaders: canonical rows, confidence instructions where the paper puts them, clear errors."""

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from caopd.prompts import REACT_ANCHOR, SCIENCE_CONFIDENCE_INSTRUCTION, TOOL_CONFIDENCE_INSTRUCTION
from caopd.targets import teacher_context
from caopd.tasks import TaskDataError, get_task

FIXTURES = Path(__file__).parent / "fixtures"


def test_tooluse_instruction_sits_just_before_the_begin_anchor():
    rows = get_task("tooluse").load(str(FIXTURES / "tooluse_rows.jsonl"))
    text = rows[0]["prompt"][0]["content"]
    assert f"must be in JSON format.\n{TOOL_CONFIDENCE_INSTRUCTION}{REACT_ANCHOR}Question: What is" in text
    assert rows[0]["demonstration"].endswith('Action: getWeather\nAction Input: {"city": "Paris"}')
    assert json.loads(rows[0]["ground_truth"]) == [{"Action": "getWeather", "Action_Input": '{"city": "Paris"}'}]


def test_every_demonstration_verifies_as_correct():
    for name, fixture in (("tooluse", "tooluse_rows.jsonl"), ("science", "science_rows.jsonl")):
        task = get_task(name)
        rows = task.load(str(FIXTURES / fixture))
        assert all(task.verify(row["demonstration"], row["ground_truth"]) for row in rows)


def test_science_keeps_the_system_message_and_adds_the_instruction():
    rows = get_task("science").load(str(FIXTURES / "science_rows.jsonl"))
    prompt = rows[0]["prompt"]
    assert prompt[0] == {"role": "system", "content": "Answer in <answer>X</answer> format."}
    assert prompt[1]["content"].endswith("D: Neon\n\n" + SCIENCE_CONFIDENCE_INSTRUCTION)
    assert json.loads(rows[0]["ground_truth"]) == "B"
    assert "Confidence: 1.00" in teacher_context("demo", rows[0]["demonstration"], None)


@pytest.mark.skipif(not (SHARED_DATA / "caopd_eval").is_dir(), reason="../shared/data/caopd_eval is not present")
def test_shared_eval_sets_load_with_every_row_verifiable():
    tooluse = get_task("tooluse").load(str(SHARED_DATA / "caopd_eval" / "tooluse_eval"))
    science = get_task("science").load(str(SHARED_DATA / "caopd_eval" / "science_eval"))
    assert (len(tooluse), len(science)) == (97, 507)
    assert all(TOOL_CONFIDENCE_INSTRUCTION + REACT_ANCHOR in row["prompt"][0]["content"] for row in tooluse)
    assert all(row["prompt"][0]["role"] == "system" for row in science)
    assert all(get_task("tooluse").verify(r["demonstration"], r["ground_truth"]) for r in tooluse)


def _write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("task", "rows", "message"),
    [
        ("tooluse", [{"prompt": "no anchor", "golden_answer": [{"Action": "a"}]}], "Begin!"),
        ("tooluse", [{"prompt": "x\n\nBegin!\nQ", "golden": []}], "lacks column"),
        ("tooluse", [{"prompt": "x\n\nBegin!\nQ", "golden_answer": []}], "non-empty list"),
        ("tooluse", [{"prompt": "x\n\nBegin!\nQ", "golden_answer": "{broken"}], "not valid JSON"),
        ("tooluse", [{"prompt": "", "golden_answer": [{"Action": "a"}]}], "non-empty string"),
        ("science", [{"prompt": "Q?", "answer": "AB"}], "one letter"),
        (
            "science",
            [{"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "x"}], "answer": "A"}],
            "end with a user",
        ),
    ],
)
def test_bad_rows_give_one_clear_error(tmp_path, task, rows, message):
    with pytest.raises(TaskDataError, match=message):
        get_task(task).load(_write(tmp_path, "rows.jsonl", rows))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(TaskDataError, match="not found"):
        get_task("tooluse").load(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TaskDataError, match="cannot read"):
        get_task("science").load(str(bad))
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,answer\n")
    with pytest.raises(TaskDataError, match="expected a save_to_disk folder"):
        get_task("science").load(str(csv))
    with pytest.raises(TaskDataError, match="unknown task"):
        get_task("chess")

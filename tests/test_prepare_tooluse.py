"""data/prepare_tooluse.py: ToolAlpaca raw JSON to the training format."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_DATA, covers
from datasets import load_from_disk

from caopd.tasks import get_task

SCRIPT = ROOT / "data" / "prepare_tooluse.py"
RAW = SHARED_DATA / "toolalpaca" / "eval_simulated.json"
CONVERTED = SHARED_DATA / "caopd_eval" / "tooluse_eval"


def _prepare(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not (RAW.is_file() and CONVERTED.is_dir()), reason="../shared/data ToolAlpaca files not present")
def test_conversion_reproduces_the_shared_prompts_for_the_same_instructions(tmp_path):
    result = _prepare("--input", RAW, "--output", tmp_path / "out", "--keep_invalid")
    assert result.returncode == 0, result.stderr
    ours = {(r["name"], r["instruction"]): r for r in load_from_disk(str(tmp_path / "out"))}
    shared = [r for r in load_from_disk(str(CONVERTED)) if (r["name"], r["instruction"]) in ours]
    assert len(ours) == 100 and len(shared) >= 60
    for row in shared:
        mine = ours[(row["name"], row["instruction"])]
        assert mine["prompt"] == row["prompt"]
        assert mine["golden_answer"] == row["golden_answer"]
    # every golden answer, written as a response, verifies as correct (placeholder inputs included)
    task = get_task("tooluse")
    kept = task.load(str(tmp_path / "out"))
    assert len(kept) == 100 and all(task.verify(r["demonstration"], r["ground_truth"]) for r in kept)
    # invalid golden JSON (placeholders such as ${animeId from searchAnime}) is reported with API and index
    assert "warning: AniAPI instruction 0: golden step 1 has an Action_Input that is not valid JSON" in result.stderr


@covers("data/prepare_tooluse.py")
def test_written_rows_load_and_every_valid_golden_verifies(tmp_path):
    raw = [
        {
            "Name": "Weather",
            "Description": "forecasts",
            "NLDocumentation": 'getWeather: the weather.\nParameters: {"city": "string"}\n',
            "Instructions": ["Weather in Oslo?", "Weather in ${city}?"],
            "Golden_Answers": [
                [{"Action": "getWeather", "Action_Input": '{"city": "Oslo"}'}],
                [{"Action": "getWeather", "Action_Input": '{"city": ${city}}'}],
            ],
        }
    ]
    source = tmp_path / "raw.json"
    source.write_text(json.dumps(raw))
    result = _prepare("--input", source, "--output", tmp_path / "out")
    assert result.returncode == 0 and "Weather instruction 1" in result.stderr
    rows = get_task("tooluse").load(str(tmp_path / "out"))
    assert len(rows) == 1
    assert get_task("tooluse").verify(rows[0]["demonstration"], rows[0]["ground_truth"])
    assert rows[0]["prompt"][0]["content"].endswith("Begin!\nQuestion: Weather in Oslo?")


@pytest.mark.parametrize(("content", "message"), [("{broken", "cannot read"), ('{"a": 1}', "expected a JSON list")])
def test_bad_raw_files(tmp_path, content, message):
    source = tmp_path / "raw.json"
    source.write_text(content)
    result = _prepare("--input", source, "--output", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def _step(action: str, action_input: str, thought: str) -> list:
    text = f"Thought: {thought}\nAction: {action}\nAction Input: {action_input}"
    return [[action, action_input, text], "Status Code: 200. Response: {...}"]


TRAINING_RECORD = {  # ToolAlpaca's train_data.json shape (README "Data format"), written for this test
    "Name": "Weather",
    "Description": "Forecasts for any city.",
    "Category": "Weather",
    "Introduction": "A weather API.",
    "Functions": "getWeather(city, days)",
    "Documentation": "{}",
    "NLDocumentation": 'getWeather: the forecast.\nParameters: {"city": "string", "days": "integer"}\n',
    "Function_Description": {"getWeather": "the forecast"},
    "Function_Projection": {"getWeather": ["GET", "/weather"]},
    "Instructions": ["Oslo for two days?", "Oslo, then Rome?", "Hello!", "Broken.", "Bad JSON."],
    "Instances": [
        {
            "input": "Oslo for two days?",
            "output": "Rain, then sun.",
            "Final Thought": "I have the forecast.",
            "intermediate_steps": [_step("getWeather", '{"city": "Oslo", "days": 2}', "I need the Oslo forecast.")],
        },
        {
            "input": "Oslo, then Rome?",
            "output": "Both sunny.",
            "Final Thought": "Done.",
            "intermediate_steps": [
                _step("getWeather", '{"city": "Oslo"}', "First Oslo."),
                _step("getWeather", '{"city": "Rome"}', "Now Rome."),
            ],
        },
        {"input": "Hello!", "output": "Hi.", "Final Thought": "No tool needed.", "intermediate_steps": []},
        {"input": "Broken.", "output": "", "Final Thought": "", "intermediate_steps": [["getWeather"]]},
        {
            "input": "Bad JSON.",
            "output": "",
            "Final Thought": "",
            "intermediate_steps": [_step("getWeather", "{city: Oslo}", "Unquoted keys.")],
        },
    ],
}


def test_training_format_takes_calls_and_real_thoughts_from_the_intermediate_steps(tmp_path):
    evaluation_record = {
        "Name": "Clock",
        "Description": "Time.",
        "NLDocumentation": "getTime: the time.\n",
        "Instructions": ["Time in Oslo?"],
        "Golden_Answers": [[{"Action": "getTime", "Action_Input": '{"city": "Oslo"}'}]],
    }
    source = tmp_path / "train_data.json"
    source.write_text(json.dumps([TRAINING_RECORD, evaluation_record, "not a record"]))
    result = _prepare("--input", source, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    rows = list(load_from_disk(str(tmp_path / "out")))
    assert [row["instruction"] for row in rows] == ["Oslo for two days?", "Oslo, then Rome?", "Time in Oslo?"]
    first, second, _ = rows
    assert first["golden_answer"] == [{"Action": "getWeather", "Action_Input": '{"city": "Oslo", "days": 2}'}]
    assert first["golden_response"] == (
        'Thought: I need the Oslo forecast.\nAction: getWeather\nAction Input: {"city": "Oslo", "days": 2}'
    )
    assert second["golden_response"] == (
        'Thought: First Oslo.\nAction: getWeather\nAction Input: {"city": "Oslo"}\n'
        'Thought: Now Rome.\nAction: getWeather\nAction Input: {"city": "Rome"}'
    )
    assert "Status Code" not in second["golden_response"]  # observations are not the student's to write
    assert first["prompt"].endswith("Begin!\nQuestion: Oslo for two days?")
    task = get_task("tooluse")
    loaded = task.load(str(tmp_path / "out"))
    assert all(task.verify(row["demonstration"], row["ground_truth"]) for row in loaded)
    for problem in (
        "warning: Weather instruction 2: no golden call",
        "warning: Weather instruction 3: a step is not [[action, input, text], observation]",
        "warning: Weather instruction 4: golden step 0 has an Action_Input that is not valid JSON",
        "warning: record 2: not a JSON object",
    ):
        assert problem in result.stderr

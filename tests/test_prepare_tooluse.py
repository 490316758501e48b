"""data/prepare_tooluse.py: ToolAlpaca raw JSON to the training format."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_DATA
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

"""Your own task: verifiers by name, regex and module:function; data errors; a CLI run."""

import json

import pytest
from conftest import ROOT

import main
from caopd.tasks import TaskDataError, get_task
from caopd.tasks.custom import exact_match, final_answer, numeric, resolve_verifier

EXAMPLE = ROOT / "examples" / "capitals.jsonl"


def test_final_answer_and_built_in_verifiers():
    response = "Thinking... the answer: maybe Lyon\nAnswer: **Paris**.\nConfidence: 0.8"
    assert final_answer(response) == "**Paris**."
    assert exact_match("Answer: Paris.\nConfidence: 0.8", "paris")
    assert not exact_match("Answer: Lyon", "Paris")
    assert numeric("so 12 + 30\nAnswer: 42.0", 42) and numeric("Answer: 1,000", "1000")
    assert not numeric("Answer: 41", 42) and not numeric("no number", 42)
    assert resolve_verifier("mcq_letter")("<answer>B</answer>", "B")
    assert resolve_verifier("regex:city=(\\w+)")("... city=Oslo ...", "oslo")
    assert resolve_verifier("caopd.verifiers:verify_mcq")("<answer>C</answer>", "C")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("regex:(", "not a valid regular expression"), ("nosuchmodule:f", "cannot import"), ("fuzzy", "choose one of")],
)
def test_bad_verifier_specs(spec, message):
    with pytest.raises(TaskDataError, match=message):
        resolve_verifier(spec)


def test_example_file_loads_with_instruction_and_demonstrations():
    task = get_task("custom", "exact_match")
    rows = task.load(str(EXAMPLE))
    assert len(rows) == 8
    assert rows[0]["prompt"][-1]["content"].endswith("no other words or explanation.")
    assert rows[4]["demonstration"].startswith("Australia's capital is Canberra")
    assert all(task.verify(r["demonstration"], r["ground_truth"]) for r in rows)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question": "Q?"}], "lacks column 'answer'"),
        ([{"question": "  ", "answer": "a"}], "empty question"),
        ([{"question": "Q?", "answer": ""}], "empty answer"),
        ([{"question": 5, "answer": "a"}], "must be text or a list of chat messages"),
    ],
)
def test_bad_rows(tmp_path, rows, message):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TaskDataError, match=message):
        get_task("custom", "exact_match").load(str(path))


def test_a_missing_demonstration_gets_the_default_and_an_own_privileged_context_is_named(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    rows = [
        {"question": "Capital of France?", "answer": "Paris", "demonstration": None, "privileged_context": "x"},
        {"question": "Capital of Peru?", "answer": "Lima", "demonstration": "Lima it is.\nAnswer: Lima"},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    loaded = get_task("custom", "exact_match").load(str(path))
    assert loaded["demonstration"] == ["Answer: Paris", "Lima it is.\nAnswer: Lima"]
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert warning.startswith(f"warning: {path}: its 'privileged_context' column is not used")


def test_verifier_flag_rules(capsys):
    assert main.main(["--output_dir", "o", "--dataset_name", "custom", "--no_wandb"]) == 2
    assert "needs --verifier" in capsys.readouterr().err
    assert main.main(["--output_dir", "o", "--verifier", "numeric", "--no_wandb"]) == 2
    assert "applies to --dataset_name custom" in capsys.readouterr().err


def test_own_task_trains_through_the_cli(tmp_path):
    from tiny_model import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    argv = ["--output_dir", str(tmp_path / "run"), "--model_name", str(model_dir), "--dataset_name", "custom"]
    argv += ["--train_data", str(EXAMPLE), "--verifier", "exact_match", "--no_wandb", "--max_steps", "1"]
    argv += ["--num_prompts_per_batch", "2", "--num_generations", "4", "--max_completion_length", "24"]
    assert main.main(argv) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_the_readme_example_verifier(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    verify = resolve_verifier("capitals_verifier:names_the_city")
    assert verify("The capital city of Peru is Lima.\nConfidence: 0.9", "Lima")
    assert not verify("The capital city of Peru is Limassol.", "Lima")


def test_the_same_question_with_two_answers_is_warned_about(tmp_path, capsys):
    from caopd.tasks import get_task

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "What is 2 + 2?", "answer": "5"}\n')
    assert len(get_task("custom", "exact_match", "sequence").load(str(rows))) == 2  # legal: kept
    assert "1 question(s) appear with different answers (e.g. 'What is 2 + 2?')" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_an_escaped_nul_in_the_text_is_warned_about(tmp_path, capsys, suffix):
    from caopd.tasks import get_task

    row = {"question": "What is 2\u0000+ 2?", "answer": "4"}
    rows = tmp_path / f"rows{suffix}"
    rows.write_text(json.dumps(row) + "\n" if suffix == ".jsonl" else json.dumps([row]))
    assert len(get_task("custom", "exact_match", "sequence").load(str(rows))) == 1  # legal: kept
    where = "line 1" if suffix == ".jsonl" else "row 1"
    assert f"{where} holds a NUL character (\\u0000) in its text" in capsys.readouterr().err

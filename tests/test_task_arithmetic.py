"""The arithmetic task: its answer rule, its generated splits and its file loader (no model needed)."""

from __future__ import annotations

import json
import time

import pytest

from caopd.prompts import ANSWER_CONFIDENCE_INSTRUCTION
from caopd.tasks.arithmetic import (
    ARITHMETIC_TASK,
    DEFAULT_TRAIN_SIZE,
    LEVELS,
    generate_questions,
    load_arithmetic,
    parse_answer,
    verify_arithmetic,
)
from caopd.tasks.base import CANONICAL_COLUMNS, TaskDataError


@pytest.mark.parametrize(
    ("response", "truth", "expected"),
    [
        ("3 + 4 = 7\nAnswer: 7", 7, True),
        ("3 + 4 = 8\nAnswer: 8", 7, False),
        ("3 + 4 = 7", 7, False),  # no Answer line: no answer
        ("The answer is 7.", 7, False),
        ("13 - 29 = -16\nAnswer: -16", -16, True),
        ("Answer: \u221216", -16, True),  # unicode minus sign
        ("Answer: +5", 5, True),
        ("Answer: 16", -16, False),
        ("Answer: 42.", 42, True),
        ("**Answer:** 42", 42, True),
        ("**Answer: 42**", 42, True),
        ("Answer: **42**.", 42, True),
        ("answer:42", 42, True),
        ("  ANSWER : 42  ", 42, True),
        ("Answer: 42\nConfidence: 0.9", 42, True),
        ("Answer: 42\nConfidence: 42", 41, False),
        ("Answer: 41\nAnswer: 42", 42, True),  # the last Answer line wins
        ("Answer: 42\nAnswer: 41", 42, False),
        ("Answer: 42\nAnswer: forty-two", 42, False),  # ... even when it is unparsable
        ("Answer: 3.5", 3, False),
        ("Answer: 42 apples", 42, False),
        ("Answer: 18,500", 18500, False),
        ("Answers: 42", 42, False),
        ("", 0, False),
    ],
)
def test_verify_arithmetic(response: str, truth: int, expected: bool) -> None:
    assert verify_arithmetic(response, truth) is expected


def test_verify_accepts_ground_truth_through_the_task_json() -> None:
    assert ARITHMETIC_TASK.verify("Answer: -7", json.dumps(-7))
    assert not ARITHMETIC_TASK.verify("Answer: 7", json.dumps(-7))
    assert not verify_arithmetic("Answer: 7", None)


@pytest.mark.parametrize(
    "junk",
    [
        "x" * 1_000_000,
        " " * 1_000_000 + "Answer: 5",
        "Answer: " + " " * 1_000_000 + "5",
        "Answer: " + "9" * 1_000_000,
        "*" * 500_000 + "Answer" + "_" * 500_000,
        ("Answer: 1 " * 100_000),
        "\u2028".join(["Answer: 7"] * 100_000) + "\n\u00e9\u4e2d\U0001f600",
    ],
)
def test_verify_is_fast_and_safe_on_junk(junk: str) -> None:
    start = time.perf_counter()
    verify_arithmetic(junk, 5)
    assert time.perf_counter() - start < 1.0


def test_huge_numbers_are_not_answers() -> None:
    assert parse_answer("Answer: " + "9" * 100) is None
    assert parse_answer("Answer: " + "9" * 30) == int("9" * 30)


def test_generation_is_deterministic() -> None:
    first = generate_questions(40, seed=3, split="train")
    assert first.to_list() == generate_questions(40, seed=3, split="train").to_list()
    assert first.to_list() != generate_questions(40, seed=4, split="train").to_list()


def _questions(split: str, seed: int, n: int = 60) -> set[str]:
    return {row["prompt"][-1]["content"] for row in generate_questions(n, seed=seed, split=split)}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_splits_are_disjoint(seed: int) -> None:
    train = _questions("train", seed, 200)
    test = _questions("test", seed + 1)
    validation = _questions("validation", seed + 2)
    assert len(train) == 200 and len(test) == 60 and len(validation) == 60
    assert not train & test and not train & validation and not test & validation


def test_unknown_split_and_too_many_questions() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        generate_questions(4, seed=0, split="dev")
    with pytest.raises(ValueError, match="distinct"):
        generate_questions(100_000, seed=0, split="test")


def test_rows_have_the_canonical_shape() -> None:
    data = generate_questions(30, seed=0)
    assert set(CANONICAL_COLUMNS) <= set(data.column_names)
    assert {row["difficulty"] for row in data} <= {level.name for level in LEVELS}
    for row in data:
        prompt = row["prompt"]
        assert prompt[-1]["role"] == "user"
        assert prompt[-1]["content"].endswith(ANSWER_CONFIDENCE_INSTRUCTION)
        assert "Answer: <number>" in prompt[-1]["content"]
        assert "Confidence" not in row["demonstration"]
        assert isinstance(json.loads(row["ground_truth"]), int)
        assert ARITHMETIC_TASK.verify(row["demonstration"], row["ground_truth"])


def test_few_shot_turns_answer_in_the_same_format() -> None:
    prompt = generate_questions(1, seed=0)[0]["prompt"]
    for message in prompt[:-1]:
        if message["role"] == "user":
            assert message["content"].endswith(ANSWER_CONFIDENCE_INSTRUCTION)
        else:
            assert parse_answer(message["content"]) is not None
            assert "\nConfidence: 0." in message["content"]


def test_default_load_is_the_generated_train_set() -> None:
    data = load_arithmetic(None)
    assert len(data) == DEFAULT_TRAIN_SIZE
    assert data.to_list() == generate_questions(DEFAULT_TRAIN_SIZE, seed=0, split="train").to_list()


def test_load_from_jsonl(tmp_path) -> None:
    rows = generate_questions(5, seed=0, split="test").to_list()
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load_arithmetic(str(path)).to_list() == rows


def test_load_turns_numeric_ground_truth_into_json(tmp_path) -> None:
    rows = [{**row, "ground_truth": json.loads(row["ground_truth"])} for row in generate_questions(3, seed=0)]
    path = tmp_path / "numeric.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = load_arithmetic(str(path))
    assert all(ARITHMETIC_TASK.verify(row["demonstration"], row["ground_truth"]) for row in loaded)


def test_load_missing_file(tmp_path) -> None:
    with pytest.raises(TaskDataError, match=r"not found.*built-in generated questions"):
        load_arithmetic(str(tmp_path / "nope.jsonl"))


def test_load_missing_column(tmp_path) -> None:
    path = tmp_path / "partial.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "What is 1 + 1?"}], "ground_truth": "2"}) + "\n")
    with pytest.raises(TaskDataError, match="lacks the column\\(s\\) demonstration"):
        load_arithmetic(str(path))


def test_load_unreadable_file(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(TaskDataError, match="could not be read"):
        load_arithmetic(str(path))

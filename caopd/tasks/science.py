"""Science (SciKnowEval Chemistry L3 multiple choice): a system prompt, a lettered question, an answer letter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset

from caopd.prompts import SCIENCE_CONFIDENCE_INSTRUCTION, append_confidence_instruction
from caopd.tasks.base import (
    Task,
    TaskDataError,
    canonical_dataset,
    default_train_path,
    read_rows,
    require_columns,
    user_chat,
)
from caopd.verifiers import extract_choice, golden_choice, verify_mcq

DEFAULT_TRAIN_PATH = Path(__file__).resolve().parents[2] / "data" / "science" / "train"
_HINT = (
    "Science rows need 'prompt' (chat messages or text) and 'answer' (the letter A-D); build them from "
    "SciKnowEval with data/prepare_science.py."
)


def demonstration_for(letter: str) -> str:
    """A minimal demonstration in the science answer format, for rows that carry no golden response."""
    return f"<reasoning>\nThe correct option is {letter}.\n</reasoning>\n<answer>\n{letter}\n</answer>"


def _messages(prompt: Any, source: str, index: int) -> list[dict[str, str]]:
    if isinstance(prompt, str) and prompt.strip():
        return user_chat(prompt)
    if isinstance(prompt, list) and prompt and all(_is_message(m) for m in prompt):
        return [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]
    raise TaskDataError(
        f"{source} row {index}: 'prompt' must be text or a list of chat messages (role and content as text)"
    )


def _is_message(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(content, (str, type(None)))


def load_science(path: str | None, confidence_instruction: bool = True) -> Dataset:
    """Science rows in the canonical shape, with the confidence instruction the system prompt lacks.

    ``confidence_instruction=False`` keeps the prompts as the data has them (an evaluation ablation).
    """
    path = default_train_path(
        path, DEFAULT_TRAIN_PATH, "build it with data/prepare_science.py from SciKnowEval (Chemistry, L3 MCQ)"
    )
    rows = read_rows(path)
    answer_column = "answer" if "answer" in rows.column_names else "golden_answer"
    require_columns(rows, ("prompt", answer_column), path, _HINT)
    has_response = "golden_response" in rows.column_names
    prompts, demonstrations, truths = [], [], []
    for index, row in enumerate(rows):
        letter = golden_choice(row[answer_column])
        if len(letter) != 1 or not letter.isalpha():
            raise TaskDataError(f"{path} row {index}: the answer must be one letter, got {row[answer_column]!r}")
        try:
            prompt = _messages(row["prompt"], path, index)
            if confidence_instruction:
                prompt = append_confidence_instruction(prompt, SCIENCE_CONFIDENCE_INSTRUCTION)
        except ValueError as err:
            raise TaskDataError(f"{path} row {index}: {err}") from err
        prompts.append(prompt)
        response = row["golden_response"] if has_response else None
        if response is not None and not isinstance(response, str):
            raise TaskDataError(f"{path} row {index}: 'golden_response' must be text, got {type(response).__name__}")
        demonstrations.append(response if response else demonstration_for(letter))
        truths.append(letter)
    return canonical_dataset(prompts, demonstrations, truths)


SCIENCE_TASK = Task(
    name="science",
    verify_fn=verify_mcq,
    load=load_science,
    answer_key=extract_choice,
    description="SciKnowEval Chemistry L3 multiple choice; correct = the last <answer> letter is the golden letter",
)

"""Tool use (ToolAlpaca, as prepared for SDFT/CaOPD): ReAct prompts, judged by the called tools and inputs."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from datasets import Dataset

from caopd.prompts import insert_tool_confidence_instruction
from caopd.tasks.base import (
    Task,
    TaskDataError,
    canonical_dataset,
    default_train_path,
    read_rows,
    require_columns,
    user_chat,
)
from caopd.verifiers import tool_call_key, verify_tooluse

DEFAULT_TRAIN_PATH = Path(__file__).resolve().parents[2] / "data" / "tooluse" / "train"
_HINT = (
    "Tool-use rows need 'prompt' (the ReAct prompt) and 'golden_answer' (a list of {Action, Action_Input}); "
    "build them from ToolAlpaca's raw JSON with data/prepare_tooluse.py."
)


def golden_calls(value: Any, row_index: int) -> list[dict[str, str]]:
    """The golden steps of a row, accepting a list of dicts or its JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as err:
            raise TaskDataError(f"row {row_index}: golden_answer is not valid JSON ({err})") from err
    if not isinstance(value, list) or not value or not all(isinstance(step, dict) for step in value):
        raise TaskDataError(f"row {row_index}: golden_answer must be a non-empty list of {{Action, Action_Input}}")
    return [
        {"Action": str(step.get("Action", "")), "Action_Input": str(step.get("Action_Input", ""))} for step in value
    ]


def demonstration_from_calls(calls: list[dict[str, str]]) -> str:
    """A ReAct demonstration written from the golden calls, for rows that carry no golden response."""
    steps = [
        f"Thought: I should call {step['Action']} with the details from the request.\n"
        f"Action: {step['Action']}\nAction Input: {step['Action_Input']}"
        for step in calls
    ]
    return "\n".join(steps)


def load_tooluse(path: str | None, confidence_instruction: bool = True) -> Dataset:
    """Tool-use rows in the canonical shape; ``path`` defaults to data/tooluse/train.

    ``confidence_instruction=False`` keeps the prompts as the data has them (an evaluation ablation).
    """
    path = default_train_path(
        path, DEFAULT_TRAIN_PATH, "build it with data/prepare_tooluse.py from ToolAlpaca's train_data.json"
    )
    rows = read_rows(path)
    require_columns(rows, ("prompt", "golden_answer"), path, _HINT)
    has_response = "golden_response" in rows.column_names
    prompts, demonstrations, truths = [], [], []
    for index, row in enumerate(rows):
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise TaskDataError(f"{path} row {index}: 'prompt' must be a non-empty string")
        try:
            prompt = insert_tool_confidence_instruction(row["prompt"]) if confidence_instruction else row["prompt"]
        except ValueError as err:
            raise TaskDataError(f"{path} row {index}: {err}") from err
        calls = golden_calls(row["golden_answer"], index)
        response = row["golden_response"] if has_response else None
        if response is not None and not isinstance(response, str):
            raise TaskDataError(f"{path} row {index}: 'golden_response' must be text, got {type(response).__name__}")
        prompts.append(user_chat(prompt))
        demonstrations.append(response if response else demonstration_from_calls(calls))
        truths.append(calls)
    return canonical_dataset(prompts, demonstrations, truths)


def tooluse_task(match: str = "sequence") -> Task:
    """The tool-use task judged by the rule ``match`` (see ``caopd.verifiers``), in P_acc and evaluation alike."""
    return Task(
        name="tooluse",
        verify_fn=partial(verify_tooluse, match=match),
        load=load_tooluse,
        description=f"ToolAlpaca tool calls in ReAct format; correct = the calls match the golden ones ({match})",
        answer_key=partial(tool_call_key, match=match),
    )

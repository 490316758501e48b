"""Task verifiers: one rule per task, used for P_acc in training and for accuracy in evaluation.

Verifiers take arbitrary model output and must never raise or hang: every pattern is line-based or
bounded, JSON is read with ``raw_decode`` from a known start.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from caopd.confidence import last_match

# "Action Input:", also written "Action_Input:" (the golden answers' key; the original's first-call rule reads it).
_STEP_LABEL = re.compile(
    r"^[ \t*_]{0,4}(action[ _]input|action|thought|observation|confidence|final answer)[ \t*_]{0,4}:[ \t*_]{0,4}",
    re.IGNORECASE | re.MULTILINE,
)
_ANSWER_TAG = re.compile(r"<answer>\s{0,64}\(?([A-Za-z])\)?\s{0,64}</answer>", re.IGNORECASE)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ToolCall:
    """One predicted or golden step: the tool name and its input, normalized for comparison."""

    action: str
    action_input: str | None  # canonical JSON (sorted keys), or None when the input is not valid JSON


def normalize_action_input(raw: Any) -> str | None:
    """Canonical JSON text of an Action Input given as a JSON string or an already parsed value."""
    if isinstance(raw, str):
        raw = raw.strip()
        try:
            value, _ = _DECODER.raw_decode(raw)
        except (json.JSONDecodeError, RecursionError):
            return None
    else:
        value = raw
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None


def parse_tool_calls(response: str) -> list[ToolCall]:
    """The ``Action:`` / ``Action Input:`` steps of a ReAct response, in order."""
    calls: list[ToolCall] = []
    pending_action: str | None = None
    labels = list(_STEP_LABEL.finditer(response))
    for index, label in enumerate(labels):
        kind = label.group(1).lower().replace("_", " ")
        end = labels[index + 1].start() if index + 1 < len(labels) else len(response)
        body = response[label.end() : end]
        if kind == "action":
            if pending_action is not None:
                calls.append(ToolCall(pending_action, None))
            pending_action = body.strip().strip("`*").strip()
        elif kind == "action input" and pending_action is not None:
            calls.append(ToolCall(pending_action, _json_in(body)))
            pending_action = None
    if pending_action is not None:
        calls.append(ToolCall(pending_action, None))
    return calls


def _json_in(body: str) -> str | None:
    """Normalized JSON starting at the first brace or bracket of an Action Input body.

    Text that is not valid JSON is kept verbatim (marked ``<raw>``): it can only match a golden input that is
    not valid JSON either and reads exactly the same (ToolAlpaca has placeholders such as ``${id from call}``).
    """
    text = body.strip()
    if not text:
        return None
    starts = [i for i in (body.find("{"), body.find("[")) if i != -1]
    normalized = normalize_action_input(body[min(starts) :] if starts else body)
    return normalized if normalized is not None else f"<raw>{text}"


def golden_tool_calls(golden: list[dict[str, Any]]) -> list[ToolCall]:
    """Golden steps (``[{"Action": ..., "Action_Input": ...}]``); invalid golden JSON is kept verbatim."""
    calls = []
    for step in golden:
        raw_input = step.get("Action_Input", step.get("Action Input", ""))
        normalized = normalize_action_input(raw_input)
        calls.append(ToolCall(str(step.get("Action", "")).strip(), normalized or f"<raw>{str(raw_input).strip()}"))
    return calls


def tooluse_golden_problem(golden: Any) -> str | None:
    """Why a golden tool-use answer cannot be compared exactly (e.g. invalid JSON in an input), or None."""
    if not isinstance(golden, list) or not all(isinstance(step, dict) for step in golden):
        return "golden_answer is not a list of {Action, Action_Input}"
    for number, step in enumerate(golden):
        if normalize_action_input(step.get("Action_Input", step.get("Action Input", ""))) is None:
            return f"golden step {number} has an Action_Input that is not valid JSON"
    return None


TOOLUSE_MATCHES = ("sequence", "first_call", "merged")


def _call_key(calls: list[ToolCall], match: str) -> Hashable | None:
    """What the rule ``match`` compares of a list of calls (None when there is no call).

    ``sequence``: every call, in order. ``first_call``: the first call only (the original release's P_acc and its
    calibration script). ``merged``: the multiset of tool names plus the inputs merged into one object (the original
    accuracy script); inputs that are not JSON objects are compared as a sorted list of their texts.
    """
    if not calls:
        return None
    if match == "sequence":
        return tuple(calls)
    if match == "first_call":
        return calls[0]
    if match != "merged":
        raise ValueError(f"unknown tool-use rule {match!r}; choose one of {', '.join(TOOLUSE_MATCHES)}")
    merged, others = {}, []
    for call in calls:
        text = call.action_input
        value = json.loads(text) if text is not None and not text.startswith("<raw>") else None
        if isinstance(value, dict):
            merged.update(value)
        else:
            others.append(str(text))
    names = tuple(sorted(Counter(call.action for call in calls).items()))
    return names, json.dumps(merged, sort_keys=True, ensure_ascii=False), tuple(sorted(others))


def tool_call_key(response: str, match: str = "sequence") -> Hashable | None:
    """The response's calls as the rule ``match`` compares them (None when it makes no call)."""
    return _call_key(parse_tool_calls(response), match)


def verify_tooluse(response: str, golden: list[dict[str, Any]], match: str = "sequence") -> bool:
    """Correct when the response's calls equal the golden calls under the rule ``match`` (see ``_call_key``).

    Inputs are compared as parsed JSON with sorted keys, so whitespace and key order do not matter. Without an
    environment the model cannot see observations, so under ``sequence`` a multi-step answer must be planned in full.
    """
    predicted = tool_call_key(response, match)
    return predicted is not None and predicted == _call_key(golden_tool_calls(golden), match)


def extract_choice(response: str) -> str | None:
    """The letter in the last ``<answer>...</answer>`` of a response, upper-cased, or None."""
    last = last_match(_ANSWER_TAG, response)
    return None if last is None else last.group(1).upper()


def golden_choice(golden: Any) -> str:
    """The golden letter, given as ``"B"`` or as the eval format ``[{"Answer": "B"}]``."""
    if isinstance(golden, list) and golden and isinstance(golden[0], dict):
        golden = golden[0].get("Answer", "")
    return str(golden).strip().upper()


def verify_mcq(response: str, golden: Any) -> bool:
    """Correct when the last ``<answer>`` letter equals the golden letter."""
    choice = extract_choice(response)
    return choice is not None and choice == golden_choice(golden)

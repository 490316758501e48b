"""What a task is: a dataset in one canonical shape plus the verifier that judges its answers.

Every task loader returns a ``datasets.Dataset`` with these columns:

- ``prompt``: the student prompt, chat messages (``[{"role": ..., "content": ...}, ...]`` ending with the
  user turn), with the confidence instruction already in it;
- ``demonstration``: a golden response for the teacher, without any ``Confidence:`` line;
- ``ground_truth``: the reference answer as a JSON string (tasks differ in its type; JSON keeps Arrow happy).

The same ``verify(response, ground_truth)`` decides correctness in training (P_acc) and in evaluation.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_from_disk

Verifier = Callable[[str, Any], bool]
CANONICAL_COLUMNS = ("prompt", "demonstration", "ground_truth")


class TaskDataError(ValueError):
    """Raised with a user-facing message when task data is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Task:
    """A named task: how to load its rows and how to judge a response against a row's ground truth."""

    name: str
    verify_fn: Verifier
    load: Callable[..., Dataset]  # (path: str | None, **options) -> canonical rows
    description: str = ""
    # The answer a response gives, as the verifier reads it (None: it gives none). Self-consistency compares two
    # responses by it; a task without one falls back to the normalized final answer.
    answer_key: Callable[[str], Hashable | None] | None = None

    def verify(self, response: str, ground_truth_json: str) -> bool:
        """Judge ``response`` against the JSON-encoded ground truth; never raises on odd model output."""
        return bool(self.verify_fn(response, json.loads(ground_truth_json)))

    def probe(self, rows: Dataset) -> None:
        """Judge the first row's demonstration once, before any model loads: a verifier of yours that raises or
        returns a non-bool then fails in seconds (``TaskDataError``), not after the first generation."""
        if len(rows):
            self.verify(rows[0]["demonstration"], rows[0]["ground_truth"])


def user_chat(text: str) -> list[dict[str, str]]:
    """A one-turn chat prompt: instruction-tuned models are trained (and evaluated) through their chat template."""
    return [{"role": "user", "content": text}]


def read_rows(path: str) -> Dataset:
    """Rows from a ``save_to_disk`` folder, a ``.json`` / ``.jsonl`` file; one clear error for anything else."""
    location = Path(path).expanduser()
    if not location.exists():
        raise TaskDataError(f"training data not found: {path}")
    try:
        if location.is_dir():
            loaded = load_from_disk(str(location))
            if isinstance(loaded, DatasetDict):
                if "train" not in loaded:
                    raise TaskDataError(f"{path} holds splits {list(loaded)} but no 'train' split")
                loaded = loaded["train"]
            return _said_what_is_ignored(loaded, path)
        if location.suffix in (".json", ".jsonl"):
            _check_json_rows(location)
            return _said_what_is_ignored(Dataset.from_json(str(location)), path)
    except TaskDataError:
        raise
    except Exception as err:  # datasets raises many types for unreadable files; report them as one message
        raise TaskDataError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    raise TaskDataError(f"{path}: expected a save_to_disk folder or a .json / .jsonl file")


def _said_what_is_ignored(rows: Dataset, path: str) -> Dataset:
    """Rows as read; a ``privileged_context`` column of the user's is named, since CaOPD writes its own."""
    if "privileged_context" in rows.column_names:
        print(
            f"warning: {path}: its 'privileged_context' column is not used: CaOPD builds the teacher's context from "
            "the golden demonstration ('demonstration' / 'golden_response'); rename the column to use it as that",
            file=sys.stderr,
        )
    return rows


def _strict_json(text: str) -> Any:
    """``json.loads`` without Python's extensions: NaN and Infinity, and numbers too large for a float, are refused
    (``ValueError``) instead of becoming answers no verifier can match."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def finite_float(literal: str) -> float:
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"{literal} is too large for a number")
        return value

    return json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)


# The longest row read, in characters: about 250k tokens, far beyond any context trained here (the paper's runs
# hold 2k + 8k). Tokenizing a much longer row takes gigabytes before the length check could refuse it.
MAX_ROW_CHARS = 1_000_000


def _check_row(location: Path, where: str, row: Any, size: int) -> None:
    """One parsed row: an object, not longer than MAX_ROW_CHARS; a NUL character in its text is warned about."""
    if not isinstance(row, dict):
        raise TaskDataError(f"cannot read {location}: {where} is not a JSON object (one row per line)")
    if size > MAX_ROW_CHARS:
        raise TaskDataError(
            f"cannot read {location}: {where} is {size:,} characters long, more than a row may be ({MAX_ROW_CHARS:,}, "
            "about 250k tokens); shorten it or leave it out"
        )
    if _holds_nul(row):
        print(
            f"warning: {location}: {where} holds a NUL character (\\u0000) in its text, usually a sign of a damaged "
            "file; it is passed to the tokenizer as it is",
            file=sys.stderr,
        )


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(item) for item in value.values())
    return isinstance(value, list) and any(_holds_nul(item) for item in value)


def _check_json_rows(location: Path) -> None:
    """A JSON list of objects or JSON Lines of objects, or a ``TaskDataError`` naming the first bad line."""
    try:
        text = location.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskDataError(f"cannot read {location}: not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    if text.startswith("\ufeff"):
        raise TaskDataError(
            f"cannot read {location}: it starts with a byte-order mark (UTF-8 with BOM); save it as plain UTF-8"
        )
    if location.suffix == ".json":
        try:
            whole = _strict_json(text)
        except ValueError as err:
            if not isinstance(err, json.JSONDecodeError):
                raise TaskDataError(f"cannot read {location}: {err}") from err
            whole = None  # perhaps JSON Lines in a .json file: checked line by line below
        except RecursionError:
            whole = None  # perhaps JSON Lines in a .json file: checked line by line below
        else:
            if not isinstance(whole, list):
                raise TaskDataError(f"cannot read {location}: expected a JSON list of objects (rows) or JSON Lines")
            for number, row in enumerate(whole, start=1):
                size = len(json.dumps(row, ensure_ascii=False)) if len(text) > MAX_ROW_CHARS else 0
                _check_row(location, f"row {number}", row, size)
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = _strict_json(line)
        except (ValueError, RecursionError) as err:
            reason = str(err) or "nested too deeply"
            if isinstance(err, json.JSONDecodeError):
                reason = f"{err.msg} column {err.colno}"
                if "control character" in err.msg:
                    reason += f": {line[err.pos]!r} unescaped in a string"
            raise TaskDataError(
                f"cannot read {location}: line {number} is not JSON ({reason}); fix or remove that line"
            ) from err
        _check_row(location, f"line {number}", row, len(line))


def require_columns(rows: Dataset, columns: tuple[str, ...], source: str, hint: str) -> None:
    missing = [column for column in columns if column not in rows.column_names]
    if missing:
        raise TaskDataError(
            f"{source} lacks column(s) {', '.join(missing)} (it has: {', '.join(rows.column_names)}). {hint}"
        )
    if len(rows) == 0:
        raise TaskDataError(f"{source} has no rows")


def require_chat_prompts(rows: Dataset, source: str) -> None:
    """Every prompt is chat messages (role and content text), as the chat template and the teacher's context need;
    a ``TaskDataError`` names the first row that is not (text, say, where messages belong)."""
    for index, prompt in enumerate(rows["prompt"]):
        if isinstance(prompt, list) and prompt and all(_is_message(message) for message in prompt):
            continue
        shown = type(prompt).__name__ if not isinstance(prompt, str) else f"text {prompt[:40]!r}"
        raise TaskDataError(
            f"{source}: row {index}: 'prompt' must be chat messages like "
            f'[{{"role": "user", "content": "..."}}], got {shown}; wrap a text prompt as one user message'
        )


def _is_message(message: Any) -> bool:
    return isinstance(message, dict) and all(isinstance(message.get(key), str) for key in ("role", "content"))


def canonical_dataset(prompts: list, demonstrations: list[str], ground_truths: list) -> Dataset:
    """Assemble the canonical columns; ground truths are JSON-encoded here, once."""
    return Dataset.from_dict(
        {
            "prompt": prompts,
            "demonstration": demonstrations,
            "ground_truth": [json.dumps(truth, ensure_ascii=False) for truth in ground_truths],
        }
    )


def default_train_path(path: str | None, default: Path, how_to_build: str) -> str:
    """``path``, or the task's default training set when it exists; otherwise say how to build it."""
    if path is not None:
        return path
    if not default.exists():
        raise TaskDataError(f"no training set at {default}: {how_to_build}, or pass --train_data PATH")
    return str(default)

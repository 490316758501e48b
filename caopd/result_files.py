"""Result files read back: an evaluation's ``metrics.json`` and ``inference.json``, checked against the shape the eval
scripts write, in one place.

``eval/compare.py``, ``eval/cascade.py``, the metric scripts and the bench scripts read these files, which a user may
have edited, truncated or written by hand. Each reader gets the data back only once it has the shape the eval scripts
write; otherwise a ``ValueError`` says, in one line, which file and which field is wrong.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

BIN_FIELDS = ("bin_lower", "bin_upper", "accuracy", "mean_confidence")
TEXT_METRICS = ("confidence_reading", "task", "tooluse_match")


def _load_json(path: str, flag: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot read it ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{flag} {path}: not UTF-8 text ({err.reason})") from err
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{flag} {path}: not valid JSON, or nested too deeply ({err})") from err


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(path: str, flag: str = "metrics") -> dict[str, Any]:
    """A ``metrics.json`` of the eval scripts: an object whose metrics are numbers (or null), whose ``bin_stats`` are
    bins with their bounds, accuracy, mean confidence and count, and whose intervals are pairs of numbers."""
    metrics = _load_json(path, flag)
    where = f"{flag} {path}"
    if not isinstance(metrics, dict):
        raise ValueError(f"{where}: not a metrics file (expected a JSON object, got {type(metrics).__name__})")
    bins = metrics.get("bin_stats")
    if not isinstance(bins, list) or not bins:
        raise ValueError(f"{where}: not a metrics file of the eval scripts (no list of bin_stats)")
    for index, entry in enumerate(bins):
        count = entry.get("count") if isinstance(entry, dict) else None
        if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
            raise ValueError(f"{where}: bin_stats[{index}] needs a whole 'count', 0 or more")
        needed = BIN_FIELDS if count else BIN_FIELDS[:2]  # an empty bin has no accuracy or confidence
        if not all(_is_number(entry.get(key)) for key in needed):
            raise ValueError(f"{where}: bin_stats[{index}] needs numbers {', '.join(needed)}")
    for key, value in metrics.items():
        if key in TEXT_METRICS:
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{where}: '{key}' must be text, got {value!r}")
        elif not isinstance(value, (dict, list)) and value is not None and not _is_number(value):
            raise ValueError(f"{where}: metric '{key}' must be a number, got {value!r}")
    intervals = metrics.get("bootstrap_95ci", {})
    if not isinstance(intervals, dict):
        raise ValueError(f"{where}: 'bootstrap_95ci' must map metrics to [low, high]")
    for key, pair in intervals.items():
        if pair is not None and not (isinstance(pair, list) and len(pair) == 2 and all(map(_is_number, pair))):
            raise ValueError(f"{where}: bootstrap_95ci['{key}'] must be [low, high], got {pair!r}")
    curve = metrics.get("selective_accuracy")
    if curve is not None and not _is_curve(curve):
        raise ValueError(f"{where}: 'selective_accuracy' must hold lists 'coverage' and 'accuracy' of equal length")
    return metrics


def _is_curve(curve: Any) -> bool:
    if not isinstance(curve, dict):
        return False
    coverage, accuracy = curve.get("coverage"), curve.get("accuracy")
    lists = isinstance(coverage, list) and isinstance(accuracy, list) and len(coverage) == len(accuracy)
    return lists and all(map(_is_number, coverage + accuracy))


def read_items(path: str, flag: str = "--input") -> list[dict[str, Any]]:
    """The items of an inference file (a JSON list, or an object with ``items``). The fields an item has must have
    the eval scripts' types: ``item_id`` a whole number 0 or more, ``correct`` true/false, ``confidence`` a number
    or null, ``response`` text; a ``ValueError`` names the first item that does not."""
    payload = _load_json(path, flag)
    items = payload.get("items") if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(
            f"{flag} {path}: expected a JSON list of items (objects, as in an eval script's inference.json)"
        )
    if not items:
        raise ValueError(f"{flag} {path}: no items")
    for index, item in enumerate(items):
        problem = _item_problem(item)
        if problem:
            raise ValueError(f"{flag} {path}: item {index}: {problem}")
    return items


def _item_problem(item: dict[str, Any]) -> str | None:
    item_id = item.get("item_id")
    if "item_id" in item and not (isinstance(item_id, int) and not isinstance(item_id, bool) and item_id >= 0):
        return f"'item_id' must be a whole number, 0 or more, got {item_id!r}"
    if "correct" in item and not isinstance(item["correct"], bool):
        return f"'correct' must be true or false, got {item['correct']!r}"
    if item.get("confidence") is not None and not _is_number(item["confidence"]):
        return f"'confidence' must be a number or null, got {item['confidence']!r}"
    if "response" in item and not isinstance(item["response"], str):
        return f"'response' must be text, got {type(item['response']).__name__}"
    return None

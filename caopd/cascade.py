"""Cascade routing: a small model answers when it is confident enough and defers the rest to a large model.

The paper's application (its Appendix F, left as future work there): with a calibrated small model, a threshold
on its stated confidence decides which queries go to the expensive model. For one small model and a threshold t:

- every item of the small model's inference file is one query;
- the small model answers it when its stated confidence is at least t (a missing confidence counts as 0.0);
- otherwise the query is deferred and scores the large model's accuracy on the same ``item_id`` (the mean over
  the large model's samples of that item), or an assumed accuracy when no large-model file is given;
- cost per query, in units of one small-model call: 1 + deferred share x R, where R is what one large-model call
  costs in small-model calls (the small model always runs first).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

DEFAULT_THRESHOLDS = tuple(round(step / 20, 2) for step in range(21))  # 0.00, 0.05, ..., 1.00
MATCH_TOLERANCE = 0.01  # "reaches the large model's accuracy" = within one point


class RoutingInputError(ValueError):
    """An inference file cannot be routed (a malformed item, or items the large model never answered)."""


def scored_items(items: Sequence[Any], source: str) -> list[tuple[Any, bool, float]]:
    """(item_id, correct, confidence) of each item; a missing confidence reads as 0.0."""
    scored = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "item_id" not in item or not isinstance(item.get("correct"), bool):
            raise RoutingInputError(f"{source}: item {index} needs an 'item_id' and a true/false 'correct'")
        confidence = item.get("confidence")
        numeric = isinstance(confidence, (int, float)) and not isinstance(confidence, bool)
        if confidence is not None and not (numeric and 0 <= confidence <= 1):
            raise RoutingInputError(f"{source}: item {index} has confidence {confidence!r}, not a value in [0, 1]")
        scored.append((item["item_id"], item["correct"], float(confidence or 0.0)))
    if not scored:
        raise RoutingInputError(f"{source}: no items")
    return scored


def question_mismatch(small: Sequence[dict[str, Any]], large: Sequence[dict[str, Any]]) -> int | None:
    """The first item_id whose question (the item's ``prompt``, as the eval scripts write it) differs between the
    two files, or None: matching ids alone do not show that both models answered the same questions."""
    asked = {item["item_id"]: item["prompt"] for item in large if "prompt" in item and "item_id" in item}
    for item in small:
        if item.get("item_id") in asked and "prompt" in item and item["prompt"] != asked[item["item_id"]]:
            return item["item_id"]
    return None


def accuracy_by_item(items: Sequence[tuple[Any, bool, float]]) -> dict[Any, float]:
    """The mean correctness of each item_id over its samples."""
    verdicts: dict[Any, list[bool]] = defaultdict(list)
    for item_id, correct, _ in items:
        verdicts[item_id].append(correct)
    return {item_id: sum(values) / len(values) for item_id, values in verdicts.items()}


def large_accuracy_on(small: Sequence[tuple[Any, bool, float]], large: dict[Any, float]) -> float:
    """The large model's accuracy over the small file's queries (each item counted as often as the small file has it),
    summed with ``math.fsum`` so that a constant 0.9 averages to 0.9, not 0.8999..."""
    return math.fsum(large[item_id] for item_id, _, _ in small) / len(small)


def route(
    small: Sequence[tuple[Any, bool, float]],
    large: dict[Any, float],
    cost_ratio: float,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> list[dict[str, float]]:
    """Deferred share, accuracy and cost of the cascade at each threshold (``large``: item_id -> accuracy).

    Each point also holds ``random_deferral_accuracy``, the expected accuracy when the same share of queries is
    deferred at random: what a confidence that knows nothing about correctness gives, so the gap to ``accuracy`` is
    what the stated confidence adds. Sums of accuracies use ``math.fsum`` (see ``large_accuracy_on``).
    """
    small_accuracy = math.fsum(float(correct) for _, correct, _ in small) / len(small)
    large_accuracy = large_accuracy_on(small, large)
    points = []
    for threshold in thresholds:
        deferred = [confidence < threshold for _, _, confidence in small]
        scores = [
            large[item_id] if defer else float(correct)
            for (item_id, correct, _), defer in zip(small, deferred, strict=True)
        ]
        share = sum(deferred) / len(small)
        points.append(
            {
                "threshold": threshold,
                "deferred_share": share,
                "accuracy": math.fsum(scores) / len(small),
                "cost": 1.0 + share * cost_ratio,
                "random_deferral_accuracy": (1.0 - share) * small_accuracy + share * large_accuracy,
            }
        )
    return points


def cheapest_matching(points: Sequence[dict[str, float]], large_accuracy: float) -> dict[str, float] | None:
    """The cheapest point whose accuracy is within one point of the large model's (the most accurate on ties)."""
    matching = [point for point in points if point["accuracy"] >= large_accuracy - MATCH_TOLERANCE - 1e-12]
    return min(matching, key=lambda point: (point["cost"], -point["accuracy"])) if matching else None


def without_confidence(items: Sequence[Any]) -> int:
    """How many items state no confidence: they read as 0.0, so every threshold above 0 defers them."""
    return sum(1 for item in items if isinstance(item, dict) and item.get("confidence") is None)

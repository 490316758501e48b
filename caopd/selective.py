"""Selective prediction: how good the answers are that a confidence threshold lets through.

Teams that gate on confidence (answer or escalate) need the risk-coverage view: sort the responses by stated
confidence, most confident first, and answer only the top share ("coverage"). Risk at a coverage is the error rate
among the answered; AURC is the mean risk over all coverages k/n, k = 1..n (lower is better); accuracy at 50 % or
80 % coverage is 1 - risk there. A missing confidence counts as 0.0, as in every other metric here.

Ties: responses with the same confidence cannot be ordered by it, so within a group of equal confidences the errors
count as spread evenly (the expectation over every order of the group). The numbers then do not depend on the
order in which the responses happen to be stored.
"""

from __future__ import annotations

import math

import numpy as np

CURVE_POINTS = 100  # the curve kept in metrics.json: coverage 0.01, 0.02, ..., 1.00


def expected_errors(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Expected errors among the k most confident responses, for k = 1..n (ties spread evenly)."""
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence, errors = confidence[order], (~correct[order]).astype(float)
    _, starts, counts = np.unique(-sorted_confidence, return_index=True, return_counts=True)
    group_errors = np.add.reduceat(errors, starts)
    errors_before = np.cumsum(group_errors) - group_errors
    group = np.repeat(np.arange(counts.size), counts)
    position = np.arange(1, confidence.size + 1) - starts[group]  # 1..size of the group
    return errors_before[group] + position * group_errors[group] / counts[group]


def risks(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Selective risk (error rate of the answered) at coverage k/n, k = 1..n."""
    return expected_errors(confidence, correct) / np.arange(1, confidence.size + 1)


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean selective risk over coverages 1/n .. n/n (0 when empty)."""
    return float(risks(confidence, correct).mean()) if confidence.size else 0.0


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy of the ceil(coverage * n) most confident responses (0 when there are none)."""
    if confidence.size == 0:
        return 0.0
    answered = max(1, math.ceil(coverage * confidence.size - 1e-9))
    return 1.0 - float(risks(confidence, correct)[answered - 1])


def accuracy_curve(confidence: np.ndarray, correct: np.ndarray) -> dict[str, list[float]]:
    """Accuracy of the answered at coverage 0.01 .. 1.00 (the curve drawn and kept in metrics.json)."""
    coverages = [round((step + 1) / CURVE_POINTS, 2) for step in range(CURVE_POINTS)]
    if confidence.size == 0:
        return {"coverage": coverages, "accuracy": [0.0] * CURVE_POINTS}
    risk = risks(confidence, correct)
    answered = [max(1, math.ceil(c * confidence.size - 1e-9)) for c in coverages]
    return {"coverage": coverages, "accuracy": [1.0 - float(risk[k - 1]) for k in answered]}

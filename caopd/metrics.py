"""Calibration metrics: one implementation, shared by every evaluation script.

Definitions (DESIGN.md): accuracy; ECE over ``n_bins`` equal-width bins (a confidence of 1.0 falls in the
last bin); Brier score; SPR = P(c+ > c-) over all (correct, incorrect) pairs, ties earn nothing, 0 when one
side is empty; AUROC = the same with ties earning one half; OCG = mean confidence - accuracy; an equal-mass-bin
ECE beside the equal-width one; and selective prediction (``caopd.selective``: AURC, accuracy at 50 % and 80 %
coverage, the accuracy-coverage curve). In the headline numbers a missing confidence counts as 0.0;
``valid_confidence_only`` repeats them over the responses whose confidence parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from caopd.selective import accuracy_at_coverage, accuracy_curve, aurc

BOOTSTRAP_METRICS = (
    "accuracy",
    "ece",
    "ece_equal_mass",
    "brier_score",
    "spr",
    "mean_confidence",
    "aurc",
    "accuracy_at_coverage_50",
    "accuracy_at_coverage_80",
)


def _pair_counts(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, float, int]:
    """(pairs with c+ > c-, tied pairs, all pairs) over correct x incorrect, in O(n log n)."""
    positives, negatives = np.sort(confidence[correct]), np.sort(confidence[~correct])
    pairs = positives.size * negatives.size
    if pairs == 0:
        return 0.0, 0.0, 0
    below = np.searchsorted(negatives, positives, side="left").sum()
    at_or_below = np.searchsorted(negatives, positives, side="right").sum()
    return float(below), float(at_or_below - below), pairs


def spr(confidence: np.ndarray, correct: np.ndarray) -> float:
    wins, _, pairs = _pair_counts(confidence, correct)
    return wins / pairs if pairs else 0.0


def auroc(confidence: np.ndarray, correct: np.ndarray) -> float:
    wins, ties, pairs = _pair_counts(confidence, correct)
    return (wins + 0.5 * ties) / pairs if pairs else 0.0


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((confidence * n_bins).astype(int), n_bins - 1)


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    if confidence.size == 0:
        return 0.0
    bins = bin_index(confidence, n_bins)
    gap = 0.0
    for b in np.unique(bins):
        members = bins == b
        gap += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap / confidence.size)


def ece_equal_mass(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """ECE over ``n_bins`` bins of (about) equal count: bin edges at the confidence quantiles.

    Equal-width bins leave most of them empty when confidences cluster (as stated confidences do, near 0.9 or at
    0.0 for a missing one) and average a few crowded bins; equal-mass bins follow the data. Equal confidences
    always share a bin, so a bin can hold more than n / n_bins responses and some bins stay empty.
    """
    if confidence.size == 0:
        return 0.0
    edges = np.quantile(confidence, np.linspace(0.0, 1.0, n_bins + 1))[1:-1]
    bins = np.searchsorted(edges, confidence, side="right")
    gap = 0.0
    for b in np.unique(bins):
        members = bins == b
        gap += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap / confidence.size)


def bin_stats(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    bins = bin_index(confidence, n_bins) if confidence.size else np.array([], dtype=int)
    stats = []
    for b in range(n_bins):
        members = bins == b
        count = int(members.sum())
        stats.append(
            {
                "bin_lower": b / n_bins,
                "bin_upper": (b + 1) / n_bins,
                "count": count,
                "accuracy": float(correct[members].mean()) if count else None,
                "mean_confidence": float(confidence[members].mean()) if count else None,
            }
        )
    return stats


def _core(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> dict[str, Any]:
    empty = confidence.size == 0
    accuracy = 0.0 if empty else float(correct.mean())
    mean_confidence = 0.0 if empty else float(confidence.mean())
    return {
        "accuracy": accuracy,
        "ece": ece(confidence, correct, n_bins),
        "ece_equal_mass": ece_equal_mass(confidence, correct, n_bins),
        "brier_score": 0.0 if empty else float(((confidence - correct) ** 2).mean()),
        "spr": spr(confidence, correct),
        "auroc": auroc(confidence, correct),
        "overconfidence_gap": mean_confidence - accuracy,
        "mean_confidence": mean_confidence,
        "aurc": aurc(confidence, correct),
        "accuracy_at_coverage_50": accuracy_at_coverage(confidence, correct, 0.5),
        "accuracy_at_coverage_80": accuracy_at_coverage(confidence, correct, 0.8),
        "n_samples": int(confidence.size),
    }


BOOTSTRAP_BUDGET = 20_000_000  # resampled items in all; above it the resamples are drawn smaller (m out of n)


def bootstrap_plan(n_items: int, n_resamples: int) -> dict[str, Any]:
    """How the intervals are drawn: the usual n-out-of-n bootstrap while n_items x n_resamples fits the budget;
    above it, resamples of m = budget / n_resamples items whose spread is scaled by sqrt(m / n_items) (the
    m-out-of-n bootstrap), so a million items take seconds, not hours."""
    size = n_items if n_items * n_resamples <= BOOTSTRAP_BUDGET else max(1000, BOOTSTRAP_BUDGET // n_resamples)
    method = "n out of n" if size >= n_items else "m out of n, rescaled"
    return {"method": method, "resamples": n_resamples, "resample_size": min(size, n_items)}


def _bootstrap(confidence, correct, n_bins, n_resamples, seed) -> dict[str, list[float]]:
    """Percentile 95% intervals from resampling responses with replacement (seeded, so reruns agree)."""
    if confidence.size == 0 or n_resamples == 0:
        return {}
    plan = bootstrap_plan(confidence.size, n_resamples)
    size = plan["resample_size"]
    scale = np.sqrt(size / confidence.size)
    full = _core(confidence, correct, n_bins)
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in BOOTSTRAP_METRICS}
    quiet = size * n_resamples < 1_000_000
    for _ in tqdm(range(n_resamples), desc="Bootstrap", unit="resample", disable=quiet):
        pick = rng.integers(0, confidence.size, size)
        values = _core(confidence[pick], correct[pick], n_bins)
        for name in BOOTSTRAP_METRICS:
            draws[name].append(full[name] + scale * (values[name] - full[name]))
    return {name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for name, v in draws.items()}


def calibration_metrics(
    correct: Sequence[bool],
    confidence: Sequence[float | None],
    n_bins: int = 10,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every headline metric, the per-bin table, the valid-confidence-only block and bootstrap intervals."""
    if len(correct) != len(confidence):
        raise ValueError(f"{len(correct)} verdicts but {len(confidence)} confidences")
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    verdicts = np.asarray(correct, dtype=bool)
    valid = np.array([c is not None for c in confidence], dtype=bool)
    stated = np.array([0.0 if c is None else float(c) for c in confidence], dtype=float)
    if np.any((stated < 0) | (stated > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    result = _core(stated, verdicts, n_bins)
    result["confidence_format_adherence"] = float(valid.mean()) if valid.size else 0.0
    result["n_bins"] = n_bins
    result["bin_stats"] = bin_stats(stated, verdicts, n_bins)
    result["selective_accuracy"] = accuracy_curve(stated, verdicts)
    result["valid_confidence_only"] = _core(stated[valid], verdicts[valid], n_bins)
    result["bootstrap_95ci"] = _bootstrap(stated, verdicts, n_bins, n_bootstrap, seed)
    if n_bootstrap:
        result["bootstrap"] = bootstrap_plan(stated.size, n_bootstrap)
    return result

"""Metrics against hand-computed values and against independent brute-force implementations."""

import itertools
import random

import numpy as np
import pytest

from caopd.metrics import calibration_metrics


def test_hand_computed_example():
    correct = [True, True, False, False]
    confidence = [0.9, 0.6, 0.6, None]  # the missing one counts as 0.0
    m = calibration_metrics(correct, confidence, n_bins=10, n_bootstrap=0)
    assert m["accuracy"] == 0.5
    assert m["mean_confidence"] == pytest.approx(0.525)
    assert m["overconfidence_gap"] == pytest.approx(0.025)
    assert m["brier_score"] == pytest.approx((0.01 + 0.16 + 0.36 + 0.0) / 4)
    # bins: 0.9 -> [0.9,1) acc 1; 0.6,0.6 -> [0.6,0.7) acc .5; 0.0 -> [0,.1) acc 0
    assert m["ece"] == pytest.approx((1 * 0.1 + 2 * 0.1 + 1 * 0.0) / 4)
    # pairs (c+, c-): (.9,.6) win, (.9,0) win, (.6,.6) tie, (.6,0) win -> 3/4; AUROC 3.5/4
    assert m["spr"] == pytest.approx(0.75)
    assert m["auroc"] == pytest.approx(0.875)
    assert m["confidence_format_adherence"] == 0.75
    assert m["valid_confidence_only"]["n_samples"] == 3
    assert m["valid_confidence_only"]["accuracy"] == pytest.approx(2 / 3)
    assert [b["count"] for b in m["bin_stats"]] == [1, 0, 0, 0, 0, 0, 2, 0, 0, 1]


def test_confidence_one_falls_in_the_last_bin_and_one_sided_spr_is_zero():
    m = calibration_metrics([True, True], [1.0, 1.0], n_bootstrap=0)
    assert m["bin_stats"][-1]["count"] == 2 and m["ece"] == 0.0
    assert m["spr"] == 0.0 and m["auroc"] == 0.0


def _reference(correct, confidence, n_bins):
    """Plain-Python reimplementation of the definitions, written independently of caopd/metrics.py."""
    conf = [0.0 if c is None else c for c in confidence]
    n = len(conf)
    acc = sum(correct) / n
    bins = {}
    for c, y in zip(conf, correct):
        bins.setdefault(min(int(c * n_bins), n_bins - 1), []).append((c, y))
    ece = sum(len(v) / n * abs(sum(y for _, y in v) / len(v) - sum(c for c, _ in v) / len(v)) for v in bins.values())
    pos = [c for c, y in zip(conf, correct) if y]
    neg = [c for c, y in zip(conf, correct) if not y]
    pairs = list(itertools.product(pos, neg))
    spr = sum(p > q for p, q in pairs) / len(pairs) if pairs else 0.0
    return {
        "accuracy": acc,
        "ece": ece,
        "brier_score": sum((c - y) ** 2 for c, y in zip(conf, correct)) / n,
        "spr": spr,
        "overconfidence_gap": sum(conf) / n - acc,
    }


@pytest.mark.parametrize("seed", range(20))
def test_matches_an_independent_implementation(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    correct = [rng.random() < 0.5 for _ in range(n)]
    confidence = [
        None if rng.random() < 0.2 else rng.choice([0.0, 0.25, 0.5, 0.85, 1.0, rng.random()]) for _ in range(n)
    ]
    got = calibration_metrics(correct, confidence, n_bins=10, n_bootstrap=0)
    for key, value in _reference(correct, confidence, 10).items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", range(10))
def test_ece_brier_and_auroc_agree_with_scikit_learn(seed):
    """ECE from scikit-learn's calibration curve (10 equal-width bins, each weighted by its share of the answers),
    its Brier score and its ROC AUC, on 200 answers whose confidences include ties at 0, 0.55 and 1. (A confidence
    exactly on an inner bin edge, 0.5, is where the two differ: scikit-learn puts it in the bin below, we in the bin
    that starts there, as a confidence of 0 falls in the first.)"""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss, roc_auc_score

    rng = np.random.default_rng(seed)
    confidence = np.where(rng.random(200) < 0.2, rng.choice([0.0, 0.55, 1.0], 200), rng.random(200))
    correct = rng.random(200) < confidence
    ours = calibration_metrics(correct.tolist(), confidence.tolist(), n_bins=10, n_bootstrap=0)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    members = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], confidence), minlength=10)
    weights = members[members > 0] / len(confidence)  # the curve's points are the non-empty bins, in order
    assert ours["ece"] == pytest.approx(float(np.sum(weights * np.abs(accuracy - mean_confidence))), abs=1e-12)
    assert ours["brier_score"] == pytest.approx(brier_score_loss(correct, confidence), abs=1e-12)
    assert ours["auroc"] == pytest.approx(roc_auc_score(correct, confidence), abs=1e-12)


def test_bootstrap_intervals_contain_the_estimate_and_are_reproducible():
    rng = np.random.default_rng(1)
    correct = list(rng.random(200) < 0.6)
    confidence = list(rng.random(200))
    first = calibration_metrics(correct, confidence, n_bootstrap=200, seed=3)
    again = calibration_metrics(correct, confidence, n_bootstrap=200, seed=3)
    assert first["bootstrap_95ci"] == again["bootstrap_95ci"]
    for name in ("accuracy", "ece", "brier_score", "spr", "mean_confidence"):
        low, high = first["bootstrap_95ci"][name]
        assert low <= first[name] <= high


def test_bootstrap_on_many_items_draws_smaller_resamples_with_the_right_spread(monkeypatch):
    from caopd import metrics
    from caopd.metrics import bootstrap_plan

    assert bootstrap_plan(1_000, 1_000) == {"method": "n out of n", "resamples": 1_000, "resample_size": 1_000}
    many = bootstrap_plan(1_000_000, 1_000)  # a billion item draws: above the budget
    assert many["method"] == "m out of n, rescaled" and many["resample_size"] == metrics.BOOTSTRAP_BUDGET // 1_000
    monkeypatch.setattr(metrics, "BOOTSTRAP_BUDGET", 2_000_000)  # the same rule at a size a test runs in seconds
    rng = np.random.default_rng(0)
    n = 100_000
    correct = rng.random(n) < 0.7
    result = calibration_metrics(list(correct), list(rng.random(n)), n_bootstrap=100, seed=1)
    assert result["bootstrap"]["method"] == "m out of n, rescaled"
    low, high = result["bootstrap_95ci"]["accuracy"]
    expected = 2 * 1.96 * np.sqrt(correct.mean() * (1 - correct.mean()) / n)  # the binomial interval's width
    assert high - low == pytest.approx(expected, rel=0.25)
    assert low <= result["accuracy"] <= high


def test_bad_inputs():
    with pytest.raises(ValueError, match="verdicts"):
        calibration_metrics([True], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_metrics([True], [1.5])


def test_selective_prediction_by_hand():
    # confidences 0.9 (right), 0.8 (wrong), 0.5 (right), 0.5 (wrong), missing -> 0.0 (wrong)
    correct = [True, False, True, False, False]
    m = calibration_metrics(correct, [0.9, 0.8, 0.5, 0.5, None], n_bootstrap=0)
    # expected errors among the top k: 0, 1, 1.5, 2 (the tie at 0.5 spreads its one error), 3
    risks = [0 / 1, 1 / 2, 1.5 / 3, 2 / 4, 3 / 5]
    assert m["aurc"] == pytest.approx(sum(risks) / 5)
    assert m["accuracy_at_coverage_50"] == pytest.approx(1 - 1.5 / 3)  # ceil(2.5) = 3 answered
    assert m["accuracy_at_coverage_80"] == pytest.approx(1 - 2 / 4)
    curve = m["selective_accuracy"]
    assert len(curve["coverage"]) == 100 and curve["coverage"][-1] == 1.0 and curve["accuracy"][-1] == 0.4
    # equal-mass bins: quantile edges put 0.0 | 0.5, 0.5 | 0.8 | 0.9 apart (the tied 0.5s share a bin)
    assert m["ece_equal_mass"] == pytest.approx((0.0 + 2 * 0.0 + 0.8 + 0.1) / 5)


def _brute_force_aurc(correct, confidence):
    """Average of the plain sorted-order AURC over every order of the tied responses (small n only)."""
    conf = [0.0 if c is None else c for c in confidence]
    values = []
    for order in itertools.permutations(range(len(conf))):
        if any(conf[order[i]] < conf[order[i + 1]] for i in range(len(order) - 1)):
            continue  # not a most-confident-first order
        errors, total = 0, 0.0
        for k, index in enumerate(order, start=1):
            errors += not correct[index]
            total += errors / k
        values.append(total / len(order))
    return sum(values) / len(values)


@pytest.mark.parametrize("seed", range(15))
def test_aurc_matches_the_average_over_tie_orders(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    correct = [rng.random() < 0.5 for _ in range(n)]
    confidence = [rng.choice([None, 0.2, 0.5, 0.5, 0.9]) for _ in range(n)]
    got = calibration_metrics(correct, confidence, n_bootstrap=0)["aurc"]
    assert got == pytest.approx(_brute_force_aurc(correct, confidence), abs=1e-12)


def test_a_perfect_ranking_has_the_lowest_aurc():
    correct = [True] * 6 + [False] * 4
    ranked = calibration_metrics(correct, [0.9] * 6 + [0.1] * 4, n_bootstrap=0)
    reversed_ = calibration_metrics(correct, [0.1] * 6 + [0.9] * 4, n_bootstrap=0)
    assert ranked["aurc"] < reversed_["aurc"] and ranked["accuracy_at_coverage_50"] == 1.0

"""The body of the metric scripts: inference JSON in, metrics JSON out, the task's own verifier in between.

Every item needs ``response`` and ``golden_answer``. Correctness and confidence are always recomputed from
the response with the shared verifier and parser, so training and every evaluation judge alike. A malformed
item (missing keys, unusable golden answer) is reported by index and counted as incorrect, never fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from caopd.atomic import output_file_problem, write_text_atomically
from caopd.checks import non_negative_int, positive_int
from caopd.confidence import (
    CONFIDENCE_READINGS,
    DEFAULT_READING,
    NOT_STATED,
    READING_HELP,
    StatedConfidence,
    read_confidence,
    reading_summary,
)
from caopd.metrics import calibration_metrics
from caopd.result_files import read_items
from caopd.verifiers import TOOLUSE_MATCHES

Judge = Callable[[str, Any], bool]
GoldenCheck = Callable[[Any], str | None]


def reread_confidences(items: list[Any], reading: str) -> list[Any]:
    """The items with ``confidence`` (and ``confidence_out_of_range``) read again from each ``response`` by
    ``reading``, so that a file written under one reading is routed or scored under another; items without a
    string response are left as they are (and reported by whoever needs a response)."""
    reread = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("response"), str):
            stated = read_confidence(item["response"], reading)
            item = {**item, "confidence": stated.value, "confidence_out_of_range": stated.out_of_range}
        reread.append(item)
    return reread


def score_items(
    items: list[dict[str, Any]],
    judge: Judge,
    check_golden: GoldenCheck | None = None,
    reading: str = DEFAULT_READING,
) -> tuple[list[bool], list[StatedConfidence], list[str]]:
    """Each item's verdict (``judge``) and stated confidence (``reading``), and the problems of malformed items."""
    verdicts, confidences, problems = [], [], []
    for index, item in enumerate(items):
        problem = check_golden(item["golden_answer"]) if check_golden and "golden_answer" in item else None
        if problem:
            problems.append(f"item {index}: {problem}")
        response = item.get("response")
        if not isinstance(response, str) or "golden_answer" not in item:
            problems.append(f"item {index}: needs a string 'response' and a 'golden_answer'")
            verdicts.append(False)
            confidences.append(NOT_STATED)
            continue
        try:
            verdicts.append(bool(judge(response, item["golden_answer"])))
        except (TypeError, ValueError, AttributeError, KeyError) as err:
            if not problem:
                problems.append(f"item {index}: unusable golden_answer ({type(err).__name__}: {err})")
            verdicts.append(False)
        confidences.append(read_confidence(response, reading))
    return verdicts, confidences, problems


def run_metric_script(
    description: str,
    judge: Judge,
    extra: Callable[[list[dict]], dict] | None = None,
    check_golden: GoldenCheck | None = None,
    tooluse_rule: bool = False,
) -> int:
    """The command line of a metric script; ``tooluse_rule`` adds ``--tooluse_match`` (passed to ``judge``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--input", required=True, help="inference JSON: a list of {response, golden_answer, ...}")
    parser.add_argument("--output", required=True, help="metrics JSON to write (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--n_bins", type=positive_int, default=10, help="equal-width confidence bins for ECE")
    parser.add_argument(
        "--n_bootstrap", type=non_negative_int, default=1000, help="bootstrap resamples for the 95%% intervals"
    )
    parser.add_argument("--confidence_reading", choices=CONFIDENCE_READINGS, default=DEFAULT_READING, help=READING_HELP)
    if tooluse_rule:
        parser.add_argument(
            "--tooluse_match", choices=TOOLUSE_MATCHES, default="sequence", help="tool-use rule (see eval_tooluse.py)"
        )
    args = parser.parse_args()
    if tooluse_rule:
        judge = partial(judge, match=args.tooluse_match)
    try:
        if args.n_bins < 1:
            raise ValueError(f"--n_bins must be positive, got {args.n_bins}")
        if args.n_bootstrap < 0:
            raise ValueError(f"--n_bootstrap must be 0 (no intervals) or more, got {args.n_bootstrap}")
        problem = output_file_problem(args.output, "--output", args.overwrite)
        if problem:
            raise ValueError(problem)
        items = read_items(args.input)
        verdicts, stated, problems = score_items(items, judge, check_golden, args.confidence_reading)
        confidences = [s.value for s in stated]
        metrics = calibration_metrics(verdicts, confidences, n_bins=args.n_bins, n_bootstrap=args.n_bootstrap)
        metrics |= reading_summary([s.out_of_range for s in stated], args.confidence_reading)
        if items and all("cut_by_length" in item for item in items):  # written by the eval scripts
            metrics["length_cut_share"] = sum(bool(item["cut_by_length"]) for item in items) / len(items)
        if extra is not None:
            metrics.update(extra(items))
        if tooluse_rule:
            metrics["tooluse_match"] = args.tooluse_match
        metrics["malformed_items"] = problems
        write_text_atomically(args.output, json.dumps(metrics, indent=2) + "\n")
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in problems[:10]:
        print(f"warning: {problem}", file=sys.stderr)
    print(
        f"accuracy {metrics['accuracy']:.3f}  ECE {metrics['ece']:.3f}  Brier {metrics['brier_score']:.3f}  "
        f"SPR {metrics['spr']:.3f}  OCG {metrics['overconfidence_gap']:+.3f}  (n={metrics['n_samples']})"
    )
    return 0

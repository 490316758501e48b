"""Cascade routing: accuracy against cost when a small model defers its unsure queries to a large model.

    python eval/cascade.py --small caopd/inference.json sdft/inference.json --labels CaOPD SDFT \
        --large large/inference.json --cost_ratio 10 --output_json routing.json --output_png routing.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caopd.atomic import output_file_problem, write_set_atomically
from caopd.cascade import (
    DEFAULT_THRESHOLDS,
    RoutingInputError,
    accuracy_by_item,
    cheapest_matching,
    large_accuracy_on,
    question_mismatch,
    route,
    scored_items,
    without_confidence,
)
from caopd.checks import finite_float, non_negative_float, probability
from caopd.confidence import CONFIDENCE_READINGS, DEFAULT_READING, READING_HELP
from caopd.metric_script import reread_confidences
from caopd.plots import routing_png
from caopd.result_files import read_items

SEMANTICS = """
Semantics: every item of a small model's inference file is one query. At threshold t the small model answers it
when its stated confidence is >= t (read again from its response by --confidence_reading; a missing confidence
counts as 0.0); otherwise the query is deferred and
scores the large model's accuracy on that item_id: the mean over the large file's samples of that item (or
--large_accuracy on every item). Cost per query, in units of one small-model call: 1 + deferred_share x R. For
each small model and threshold, routing.json holds threshold, deferred_share, accuracy and cost under
results[label], with random_deferral_accuracy: the expected accuracy when the same share is deferred at random (a
confidence that carries no information about correctness; accuracy above it is what the confidence adds). Under
cheapest_matching_large[label]: the cheapest threshold whose accuracy is within one point of the large model's
(null if none). without_confidence[label] counts the items that state no confidence (of items[label]). The PNG
plots accuracy against cost, one curve per small model with its random-deferral line
dashed, and the large model alone (cost R) as a point.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=SEMANTICS, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", nargs="+", required=True, help="inference.json of each small model")
    parser.add_argument("--labels", nargs="+", help="one name per small model (default: the parent folder names)")
    large = parser.add_mutually_exclusive_group(required=True)
    large.add_argument("--large", help="inference.json of the large model, on the same items")
    large.add_argument("--large_accuracy", type=probability, help="assume a large model of this accuracy on every item")
    parser.add_argument(
        "--cost_ratio", type=non_negative_float, required=True, help="R: one large-model call in small calls"
    )
    parser.add_argument(
        "--thresholds", type=finite_float, nargs="+", default=list(DEFAULT_THRESHOLDS), help="confidence thresholds"
    )
    parser.add_argument("--confidence_reading", choices=CONFIDENCE_READINGS, default=DEFAULT_READING, help=READING_HELP)
    parser.add_argument("--output_json", required=True)
    parser.add_argument("--output_png", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _read_items(path: str, flag: str) -> list:
    try:
        return read_items(path, flag)
    except ValueError as err:
        raise RoutingInputError(str(err)) from err


def routing(args: argparse.Namespace) -> dict:
    labels = args.labels or [Path(path).parent.name or path for path in args.small]
    if len(labels) != len(args.small) or len(set(labels)) != len(labels):
        raise RoutingInputError("give one distinct --labels entry per --small file")
    if args.cost_ratio < 0:
        raise RoutingInputError(f"--cost_ratio must be 0 or more, got {args.cost_ratio}")
    if args.large_accuracy is not None and not 0 <= args.large_accuracy <= 1:
        raise RoutingInputError(f"--large_accuracy must lie in [0, 1], got {args.large_accuracy}")
    outside = [value for value in args.thresholds if not 0 <= value <= 1.1]
    if outside:
        raise RoutingInputError(
            f"--thresholds are confidences in [0, 1] (not percentages; one just above 1 defers every query), "
            f"got {outside}"
        )
    for flag in ("output_json", "output_png"):
        problem = output_file_problem(getattr(args, flag), f"--{flag}", args.overwrite)
        if problem:
            raise RoutingInputError(problem)
    raw = {
        label: reread_confidences(_read_items(path, "--small"), args.confidence_reading)
        for label, path in zip(labels, args.small, strict=True)
    }
    small = {label: scored_items(raw[label], path) for label, path in zip(labels, args.small, strict=True)}
    if args.large is not None:
        large_items = _read_items(args.large, "--large")
        large = accuracy_by_item(scored_items(large_items, args.large))
        for label, path in zip(labels, args.small, strict=True):
            differing = question_mismatch(raw[label], large_items)
            if differing is not None:
                raise RoutingInputError(
                    f"{path}: item_id {differing} asks another question than in {args.large}; evaluate both models "
                    "on the same data (same --data, --split and --question_seed)"
                )
            missing = {item_id for item_id, _, _ in small[label]} - set(large)
            if missing:
                raise RoutingInputError(
                    f"{path}: {len(missing)} item_id(s) are not in {args.large}; evaluate both models on the same data"
                )
    result = {"cost_ratio": args.cost_ratio, "confidence_reading": args.confidence_reading, "large": {}}
    result["small"] = dict(zip(labels, args.small, strict=True))
    result["results"], result["cheapest_matching_large"] = {}, {}
    result["without_confidence"] = {label: without_confidence(items) for label, items in raw.items()}
    result["items"] = {label: len(items) for label, items in raw.items()}
    for label, items in small.items():
        by_item = large if args.large is not None else {item_id: args.large_accuracy for item_id, _, _ in items}
        large_accuracy = large_accuracy_on(items, by_item)
        result["large"][label] = {"source": args.large or "assumed (--large_accuracy)", "accuracy": large_accuracy}
        points = route(items, by_item, args.cost_ratio, args.thresholds)
        result["results"][label] = points
        result["cheapest_matching_large"][label] = cheapest_matching(points, large_accuracy)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = routing(args)
        write_set_atomically(
            {
                Path(args.output_json): (lambda stream: stream.write(json.dumps(result, indent=2) + "\n"), "w"),
                Path(args.output_png): (lambda stream: stream.write(routing_png(result)), "wb"),
            }
        )
    except (RoutingInputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for label, point in result["cheapest_matching_large"].items():
        large = result["large"][label]["accuracy"]
        verdict = (
            f"threshold {point['threshold']:.2f}: accuracy {point['accuracy']:.3f} at cost {point['cost']:.2f}"
            if point
            else "no threshold reaches it"
        )
        print(f"{label}: large model accuracy {large:.3f}; cheapest within one point: {verdict}")
        missing, total = result["without_confidence"][label], result["items"][label]
        print(f"{label}: {missing} of {total} items state no confidence; every threshold above 0 defers them")
    return 0


if __name__ == "__main__":
    sys.exit(main())

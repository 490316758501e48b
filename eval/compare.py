"""Compare runs: several metrics.json files in, a Markdown table and overlaid diagrams out.

    python eval/compare.py base/metrics.json sdft/metrics.json caopd/metrics.json \
        --labels base SDFT CaOPD --output_md compare.md --output_png compare.png [--output_json compare.json] \
        [--output_selective_png sel.png]

The table holds accuracy, both ECEs, Brier, SPR, AUROC, OCG, mean confidence, AURC, accuracy at 50 % and 80 %
coverage, format adherence, the share of confidences stated outside [0, 1] and the confidence reading the metrics
were computed under ("-" for files older than the reading), with bootstrap intervals where the metrics file has them;
runs read under different readings are compared with a warning; ``--output_json`` writes
the same cells as numbers ({run: {metric: {"value", "ci95"}}}).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caopd.atomic import output_file_problem, write_set_atomically
from caopd.plots import reliability_png, selective_png
from caopd.result_files import read_metrics

COLUMNS = (
    ("accuracy", "acc"),
    ("ece", "ECE"),
    ("ece_equal_mass", "ECE (equal mass)"),
    ("brier_score", "Brier"),
    ("spr", "SPR"),
    ("auroc", "AUROC"),
    ("overconfidence_gap", "OCG"),
    ("mean_confidence", "mean conf"),
    ("aurc", "AURC"),
    ("accuracy_at_coverage_50", "acc@50%"),
    ("accuracy_at_coverage_80", "acc@80%"),
    ("confidence_format_adherence", "format"),
    ("confidence_out_of_range_share", "out of range"),
    ("confidence_reading", "reading"),
    ("n_samples", "n"),
)


def _cell(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    if isinstance(value, (int, str)):
        return str(value)
    interval = metrics.get("bootstrap_95ci", {}).get(key)
    text = f"{value:+.3f}" if key == "overconfidence_gap" else f"{value:.3f}"
    return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else text


def markdown_table(runs: dict[str, dict]) -> str:
    """One row per run; 95% bootstrap intervals in brackets where the metrics file has them."""
    header = "| run | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    rows = [f"| {label} | " + " | ".join(_cell(m, key) for key, _ in COLUMNS) + " |" for label, m in runs.items()]
    return "\n".join([header, rule, *rows]) + "\n"


def json_table(runs: dict[str, dict]) -> dict[str, dict]:
    """The table's cells as numbers: per run and metric, the value and its 95% interval (or None)."""
    return {
        label: {
            key: {"value": metrics.get(key), "ci95": metrics.get("bootstrap_95ci", {}).get(key)} for key, _ in COLUMNS
        }
        for label, metrics in runs.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Side-by-side metrics and an overlaid reliability diagram.")
    parser.add_argument("metrics", nargs="+", help="metrics.json files (from eval_*.py or eval/run_eval_*.py)")
    parser.add_argument("--labels", nargs="+", help="one name per file (default: the parent folder names)")
    parser.add_argument("--output_md", required=True)
    parser.add_argument("--output_png", required=True, help="overlaid reliability diagrams")
    parser.add_argument("--output_selective_png", help="overlaid accuracy-coverage curves (optional)")
    parser.add_argument("--output_json", help="the table as JSON (optional)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(path).parent.name or path for path in args.metrics]
    if len(labels) != len(args.metrics) or len(set(labels)) != len(labels):
        print("error: give one distinct --labels entry per metrics file", file=sys.stderr)
        return 2
    for flag in ("output_md", "output_png", "output_selective_png", "output_json"):
        if getattr(args, flag) and (problem := output_file_problem(getattr(args, flag), f"--{flag}", args.overwrite)):
            print(f"error: {problem}", file=sys.stderr)
            return 2
    runs = {}
    for label, path in zip(labels, args.metrics, strict=True):
        try:
            runs[label] = read_metrics(path)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.output_selective_png and (old := [label for label, m in runs.items() if "selective_accuracy" not in m]):
        print(
            f"error: {', '.join(old)}: no accuracy-coverage curve; re-score it with eval/run_eval_*.py", file=sys.stderr
        )
        return 2
    readings = {m.get("confidence_reading", "unrecorded") for m in runs.values()}
    if len(readings) > 1:
        print(
            f"warning: the runs' confidences were read under different readings ({', '.join(sorted(readings))}); "
            "re-score them under one (--confidence_reading of eval/run_eval_*.py)",
            file=sys.stderr,
        )
    tasks = {m["task"] for m in runs.values() if m.get("task")}
    if len(tasks) > 1:
        print(
            f"warning: the runs were evaluated on different tasks ({', '.join(sorted(tasks))}); their rows are not "
            "comparable",
            file=sys.stderr,
        )
    table = markdown_table(runs)
    # Beyond three runs a "vs" title outgrows the figure; the legend names every run anyway.
    title = " vs ".join(labels) if len(labels) <= 3 else f"{len(labels)} runs"
    outputs = {
        Path(args.output_md): (lambda stream: stream.write(table), "w"),
        Path(args.output_png): (
            lambda stream: stream.write(reliability_png(runs, title="Reliability: " + title)),
            "wb",
        ),
    }
    if args.output_json:
        outputs[Path(args.output_json)] = (
            lambda stream: stream.write(json.dumps(json_table(runs), indent=1) + "\n"),
            "w",
        )
    if args.output_selective_png:
        image = selective_png(runs, title="Selective prediction: " + title)
        outputs[Path(args.output_selective_png)] = (lambda stream: stream.write(image), "wb")
    try:
        write_set_atomically(outputs)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The K ablation (paper Fig. 6): CaOPD trained with K in {1, 2, 4, 8, 16} rollouts per question, all else equal.

P_acc = correct / K can only take K + 1 values: with K = 1..4 the targets are coarse (0, 0.5, 1 at K = 2) and the
paper finds the model stays overconfident; K = 8 is its sweet spot, and accuracy stays flat. Every K trains on the
same questions for the same steps and is evaluated on the same held-out questions. Writes ``k_ablation.md`` and
``k_ablation.json`` (accuracy, ECE, mean stated confidence, format adherence, and the histogram of stated
confidences per K) and ``k_ablation.png`` (the histograms, and accuracy and ECE against K).

    python bench/k_ablation.py --output_dir outputs/k_ablation                         # the paper's scale, 8 GPUs
    python bench/k_ablation.py --output_dir outputs/k_ablation_cpu --cpu_scale --ks 1 2 4 8   # 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from experiment_scale import ARMS, Scale, add_scale_flags
from stages import run_plan

from caopd.atomic import write_text_atomically
from caopd.checks import positive_int
from caopd.user_errors import one_line_errors

BINS = 10


def confidence_histogram(items: list[dict]) -> list[float]:
    """Share of responses per stated-confidence bin [0, 0.1), ..., [0.9, 1.0]; a missing confidence in none."""
    counts = [0] * BINS
    for item in items:
        if item["confidence"] is not None:
            counts[min(int(item["confidence"] * BINS), BINS - 1)] += 1
    return [count / len(items) for count in counts]


def summarize(out: Path, ks: list[int]) -> dict[str, dict]:
    rows = {}
    for k in ks:
        folder = out / "eval" / f"k{k}"
        metrics = json.loads((folder / "metrics.json").read_text())
        items = json.loads((folder / "inference.json").read_text())
        rows[str(k)] = {
            key: metrics[key] for key in ("accuracy", "ece", "mean_confidence", "confidence_format_adherence")
        } | {"ci95": metrics.get("bootstrap_95ci", {}), "histogram": confidence_histogram(items)}
    return rows


def markdown(rows: dict[str, dict]) -> str:
    header = "| K | acc | ECE | mean conf | format | stated confidences, share per bin 0.0 ... 0.9 |"
    lines = [header, "|---|---|---|---|---|---|"]
    for k, row in rows.items():
        histogram = " ".join(f"{share:.2f}" for share in row["histogram"])
        cells = [f"{row[key]:.3f}" for key in ("accuracy", "ece", "mean_confidence", "confidence_format_adherence")]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {histogram} |")
    return "\n".join(lines) + "\n"


def picture(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(rows) + 1, figsize=(3 * (len(rows) + 1), 3), squeeze=False)
    centers = [(i + 0.5) / BINS for i in range(BINS)]
    for axis, (k, row) in zip(axes[0], rows.items(), strict=False):
        axis.bar(centers, row["histogram"], width=1 / BINS, edgecolor="black")
        axis.set(title=f"K = {k}", xlabel="stated confidence", ylim=(0, 1), xlim=(0, 1))
    summary = axes[0][-1]
    ks = [int(k) for k in rows]
    summary.plot(ks, [row["accuracy"] for row in rows.values()], marker="o", label="accuracy")
    summary.plot(ks, [row["ece"] for row in rows.values()], marker="s", label="ECE")
    summary.set(xscale="log", xticks=ks, xticklabels=[str(k) for k in ks], xlabel="K", ylim=(0, 1))
    summary.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # K's own ticks only, no 3x10^0 labels
    summary.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scale_flags(parser)
    parser.add_argument("--ks", nargs="+", type=positive_int, default=[1, 2, 4, 8, 16], help="rollouts per question")
    parser.add_argument("--backbone", choices=("sdft", "sdpo"), default="sdft")
    parser.add_argument("--task", choices=("tooluse", "science", "arithmetic"), default=None,
                        help="default: tooluse, or arithmetic with --cpu_scale")  # fmt: skip
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.ks) or (args.backbone == "sdpo" and 1 in args.ks):
        parser.error("--ks must be positive (and at least 2 on the sdpo backbone, whose advantages need a group)")
    scale = Scale.from_args(args)
    task = args.task or ("arithmetic" if scale.cpu else "tooluse")
    out = Path(args.output_dir).resolve()
    arm = ARMS["caopd" if args.backbone == "sdft" else "caopd_sdpo"]
    data = None if task == "arithmetic" else f"data/{task}/test"
    stages = []
    for k in args.ks:
        train_data = None if task == "arithmetic" else f"data/{task}/train"
        stages.append((f"train_k{k}", scale.train(arm, task, train_data, out / f"k{k}", generations=k)))
        stages.append((f"eval_k{k}", scale.evaluate(task, data, str(out / f"k{k}"), out / "eval" / f"k{k}")))
    run_plan(stages, out, args.force)
    rows = summarize(out, args.ks)
    write_text_atomically(out / "k_ablation.json", json.dumps(rows, indent=1) + "\n")
    write_text_atomically(out / "k_ablation.md", markdown(rows))
    picture(rows, out / "k_ablation.png")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

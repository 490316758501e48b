"""Reliability diagrams as PNG: accuracy per confidence bin against the diagonal of perfect calibration; the
selective-prediction and routing curves; a run's held-out calibration against the training step.

Each ``*_png`` function returns the image's bytes (a caller writing a set of outputs together takes those); each
``*_diagram`` writes that image to a path, atomically.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from caopd.atomic import write_atomically


def _png(figure) -> bytes:
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def write_png(path: Path | str, image: bytes) -> None:
    write_atomically(path, lambda stream: stream.write(image), mode="wb")


def reliability_diagram(runs: dict[str, dict[str, Any]], path: Path | str, title: str = "Reliability") -> None:
    write_png(path, reliability_png(runs, title))


def selective_diagram(runs: dict[str, dict[str, Any]], path: Path | str, title: str = "Selective prediction") -> None:
    write_png(path, selective_png(runs, title))


def routing_diagram(routing: dict[str, Any], path: Path | str) -> None:
    write_png(path, routing_png(routing))


def reliability_png(runs: dict[str, dict[str, Any]], title: str = "Reliability") -> bytes:
    """One PNG for one or several metrics dicts (label -> metrics with ``bin_stats``); overlaid when several.

    Each run is drawn as accuracy per non-empty bin at the bin's mean confidence, marker area following the
    bin's share of responses, with its ECE in the legend; a single run also gets bars of its bin accuracies.
    """
    figure, axis = plt.subplots(figsize=(5.2, 5.2), dpi=120)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for label, metrics in runs.items():
        filled = [b for b in metrics["bin_stats"] if b["count"]]
        total = sum(b["count"] for b in filled) or 1
        if len(runs) == 1:
            width = filled[0]["bin_upper"] - filled[0]["bin_lower"] if filled else 0.1
            axis.bar(
                [b["bin_lower"] for b in filled],
                [b["accuracy"] for b in filled],
                width=width,
                align="edge",
                alpha=0.25,
                edgecolor="black",
            )
        axis.plot(
            [b["mean_confidence"] for b in filled],
            [b["accuracy"] for b in filled],
            marker="o",
            label=f"{label} (ECE {metrics['ece']:.3f}, acc {metrics['accuracy']:.3f})",
        )
        axis.scatter(
            [b["mean_confidence"] for b in filled],
            [b["accuracy"] for b in filled],
            s=[20 + 400 * b["count"] / total for b in filled],
            alpha=0.35,
        )
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="stated confidence", ylabel="accuracy", title=title)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def selective_png(runs: dict[str, dict[str, Any]], title: str = "Selective prediction") -> bytes:
    """Accuracy of the answered questions against the share answered (most confident first), one curve per run.

    A model whose confidence ranks its answers well starts high on the left and falls to its plain accuracy at
    full coverage; a flat curve means the confidence says nothing about which answers are right.
    """
    figure, axis = plt.subplots(figsize=(5.2, 4.2), dpi=120)
    for label, metrics in runs.items():
        curve = metrics["selective_accuracy"]
        axis.plot(
            curve["coverage"],
            curve["accuracy"],
            label=f"{label} (AURC {metrics['aurc']:.3f}, acc@50% {metrics['accuracy_at_coverage_50']:.2f})",
        )
    axis.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="coverage (share answered, most confident first)")
    axis.set(ylabel="accuracy of the answered", title=title)
    axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def routing_png(routing: dict[str, Any]) -> bytes:
    """Accuracy against cost per query for each small model's cascade (dashed: deferring the same share at random,
    the line a confidence without information gives), and the large model alone as a point."""
    figure, axis = plt.subplots(figsize=(5.6, 4.2), dpi=120)
    ratio = routing["cost_ratio"]
    for label, points in routing["results"].items():
        costs = [p["cost"] for p in points]
        (line,) = axis.plot(costs, [p["accuracy"] for p in points], marker=".", label=label)
        at_random = [p["random_deferral_accuracy"] for p in points]
        axis.plot(costs, at_random, linestyle="--", color=line.get_color(), alpha=0.6)
        for point in points[:: max(1, len(points) // 5)]:  # a few thresholds written along the curve
            position = (point["cost"], point["accuracy"])
            axis.annotate(f"t={point['threshold']:.2f}", position, fontsize=6, color=line.get_color())
    large = sorted({round(entry["accuracy"], 6) for entry in routing["large"].values()})
    axis.scatter([ratio] * len(large), large, marker="*", s=140, color="black", zorder=3, label="large model alone")
    axis.plot([], [], linestyle="--", color="gray", label="dashed: same share deferred at random")
    axis.set(xlabel="cost per query (small-model calls)", ylabel="accuracy", title=f"Cascade routing (R = {ratio:g})")
    axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    return _png(figure)


def calibration_curve_png(history: list[dict[str, Any]]) -> bytes:
    """Held-out accuracy, mean stated confidence and ECE against the training step (``caopd.held_out``): the gap
    between the first two is the overconfidence a run builds or removes as it trains."""
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    steps = [entry["step"] for entry in history]
    for name, label, style in (
        ("accuracy", "accuracy", "-o"),
        ("mean_confidence", "mean stated confidence", "-s"),
        ("ece", "ECE", "--^"),
    ):
        axis.plot(steps, [entry[name] for entry in history], style, label=label, markersize=4)
    last = history[-1]
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(
        ylim=(-0.02, 1.02),
        xlabel="optimizer step",
        ylabel="held-out value",
        title=f"Held-out calibration (step {last['step']}: accuracy {last['accuracy']:.3f}, ECE {last['ece']:.3f})",
    )
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return _png(figure)

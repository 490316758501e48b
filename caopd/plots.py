"""Reliability diagrams as PNG: accuracy per confidence bin against the diagonal of perfect calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from caopd.atomic import write_atomically


def reliability_diagram(runs: dict[str, dict[str, Any]], path: Path | str, title: str = "Reliability") -> None:
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
    write_atomically(path, lambda stream: figure.savefig(stream, format="png"), mode="wb")
    plt.close(figure)

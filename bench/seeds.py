"""Arms of ``bench/reproduce.py`` under several seeds: per-seed numbers and their mean with a 95% interval.

Where two arms differ by a few points, one run says little: the seed moves the sampled rollouts, the LoRA init and
the evaluation's samples. This script runs ``bench/reproduce.py`` once per seed (into ``<output_dir>/seed-<s>``, so
each seed's stages resume on their own; flags it does not know are passed to reproduce.py unchanged), then writes
``seeds.md`` and ``seeds.json``: per arm, each seed's accuracy, ECE, Brier score, mean confidence, OCG and format
adherence under the paper's confidence reading, the ECE over the responses that state a confidence, and per metric
the mean across seeds with a 95% Student-t interval.

    python bench/seeds.py --output_dir outputs/seeds --seeds 42 43 44 --arms sdpo caopd_sdpo
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import reproduce

from caopd.atomic import write_text_atomically
from caopd.checks import non_negative_int
from caopd.user_errors import one_line_errors

METRICS = {
    "accuracy": "acc",
    "ece": "ECE",
    "brier_score": "Brier",
    "mean_confidence": "mean conf",
    "overconfidence_gap": "OCG",
    "confidence_format_adherence": "format",
    "stated_ece": "ECE stated",
}
# Two-sided 95% quantiles of Student's t by degrees of freedom; beyond the table, its last value (conservative).
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)


def build_parser() -> argparse.ArgumentParser:
    own = {"-h", "--help", "--output_dir", "--seed", "--arms", "--rescore"}
    passed = [
        option for action in reproduce.build_parser()._actions for option in action.option_strings if option not in own
    ]
    parser = argparse.ArgumentParser(
        description="bench/reproduce.py once per seed; per-seed numbers and means with 95%% t-intervals.",
        epilog="Passed on to bench/reproduce.py unchanged (the same for every seed): " + ", ".join(passed),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", default="outputs/seeds")
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=[42, 43, 44])
    parser.add_argument("--arms", nargs="+", choices=reproduce.ARMS, default=["sdpo", "caopd_sdpo"])
    return parser


def mean_interval(values: list[float | None]) -> tuple[float, float, float] | None:
    """The mean and its 95% Student-t interval over the values there are (the mean itself for one value; None for
    none: an arm that never stated a confidence has no stated ECE)."""
    values = [value for value in values if value is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = T_95[min(len(values) - 2, len(T_95) - 1)] * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def seed_numbers(folder: Path, arms: list[str], seed: int) -> dict[str, dict[str, float]]:
    """Each arm's metrics of one seed's run, with the ECE over the responses that state a confidence."""
    items = reproduce.arm_items(folder, arms)
    stated = reproduce.stated_metrics(items, 0, seed)
    numbers = {}
    for arm in arms:
        metrics = json.loads((folder / "eval" / arm / "metrics.json").read_text())
        numbers[arm] = {key: metrics[key] for key in METRICS if key != "stated_ece"}
        numbers[arm]["stated_ece"] = stated[arm]["ece"] if stated[arm]["n_samples"] else None
    return numbers


def seeds_markdown(per_seed: dict[int, dict[str, dict]], arms: list[str]) -> tuple[str, dict[str, dict]]:
    """The table (each seed's row, then the mean with its interval per arm) and the means with their intervals."""
    columns = " | ".join(METRICS.values())
    lines = ["# Arms across seeds (paper's confidence reading)", "", f"| run | seed | {columns} |"]
    lines.append("|---|---|" + "---|" * len(METRICS))
    summary = {}
    for arm in arms:
        for seed, numbers in per_seed.items():
            cells = " | ".join(_number(numbers[arm][key]) for key in METRICS)
            lines.append(f"| {reproduce.LABELS[arm]} | {seed} | {cells} |")
        summary[arm] = {key: mean_interval([numbers[arm][key] for numbers in per_seed.values()]) for key in METRICS}
        cells = " | ".join(_interval(value) for value in summary[arm].values())
        lines.append(f"| **{reproduce.LABELS[arm]}** | mean [95% t] | {cells} |")
    return "\n".join(lines) + "\n", summary


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _interval(value: tuple[float, float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]"


def main(argv: list[str] | None = None) -> int:
    args, passed = build_parser().parse_known_args(argv)
    out = Path(args.output_dir).resolve()
    per_seed = {}
    for seed in args.seeds:
        folder = out / f"seed-{seed}"
        command = [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--output_dir", str(folder)]
        command += ["--seed", str(seed), "--arms", *args.arms, *passed]
        print(f"[seeds] seed {seed}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
            print(f"error: seed {seed} failed (its stages are in {folder}); re-run to resume", file=sys.stderr)
            return 1
        per_seed[seed] = seed_numbers(folder, args.arms, seed)
    text, summary = seeds_markdown(per_seed, args.arms)
    write_text_atomically(out / "seeds.md", text)
    data = {"seeds": per_seed, "mean_95ci": summary, "reproduce_flags": passed}
    write_text_atomically(out / "seeds.json", json.dumps(data, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

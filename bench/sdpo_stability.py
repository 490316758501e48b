"""What each training step of the SDPO arms did, under the settings that tell a defect from a step size too large.

CaOPD on SDPO collapsed in the 2026-12-07 eight-arm run (``bench/reproduce.py``: accuracy 0.05 against SDPO's 0.44).
This script trains the two SDPO arms of ``bench/reproduce.py`` (``sdpo``, ``caopd_sdpo``) from the same start under
several settings (``VARIANTS``) and writes, per run and step, what the step saw and did:

- of its rollouts: the ``Answer:`` rate, the confidence-format rate (the paper's reading), the accuracy, mean P_acc;
- of its loss: the confidence and reasoning parts of the distillation loss (paper Eq. 7), SDPO's policy-gradient
  term (logged by TRL when ``distillation_weight`` < 1), the gradient norm, the student's entropy;
- the rows distilled and those without a successful sibling (SDPO distils those not at all), the completion length
  in tokens as sampled and as trained on after the rewrite, and the rollout importance-sampling ratio (mean, max,
  clipped share) where TRL keeps rollout log-probs.

``steps.md`` holds every run's table and a summary line per run (accuracy and ``Answer:`` rate over its first and
last four steps); ``steps.json`` the same numbers. Stages are ``bench/stages.py``'s: a finished run is skipped, a
cut one resumes. ``--report_runs`` tables runs trained elsewhere (``bench/seeds.py``'s, say) and trains nothing.
docs/sdpo_stability.md reads the results.

    python bench/sdpo_stability.py --output_dir outputs/sdpo_stability
    python bench/sdpo_stability.py --output_dir outputs/seed_steps --report_runs outputs/seeds/seed-42/caopd_sdpo
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import reproduce
from stages import run_plan

from caopd.atomic import write_text_atomically
from caopd.checkpoints import latest_complete
from caopd.checks import non_negative_int, positive_int
from caopd.confidence import parse_confidence
from caopd.rollout_log import read_rollout_rows
from caopd.tasks.arithmetic import parse_answer
from caopd.user_errors import one_line_errors

ARMS = ("sdpo", "caopd_sdpo")
# Settings compared (main.py flags added to an arm's own); all but the flags named are bench/reproduce.py's.
VARIANTS: dict[str, list[str]] = {
    "sampled_lr3e-4": ["--distillation_mode", "sampled_token", "--learning_rate", "3e-4"],
    "sampled_lr1e-4": ["--distillation_mode", "sampled_token", "--learning_rate", "1e-4"],
    "sampled_lr3e-5": ["--distillation_mode", "sampled_token", "--learning_rate", "3e-5"],
    "sampled_policy_lr3e-4": [
        *("--distillation_mode", "sampled_token", "--learning_rate", "3e-4"),
        *("--distillation_weight", "0.5"),
    ],
    "topk_lr3e-4": ["--distillation_mode", "topk_logits", "--learning_rate", "3e-4"],
    "topk_lr1e-4": ["--distillation_mode", "topk_logits", "--learning_rate", "1e-4"],
}
# Logged metric -> column; a run whose trainer did not log one shows "-".
LOGGED = {
    "caopd/loss_confidence": "loss conf",
    "caopd/loss_reasoning": "loss reason",
    "self_distillation/policy_loss": "policy",
    "grad_norm": "grad norm",
    "entropy": "entropy",
    "caopd/rows_distilled": "distilled",
    "caopd/rows_without_successful_sibling": "no sibling",
    "caopd/completion_length_sampled": "len sampled",
    "caopd/completion_length_trained": "len trained",
    "caopd/is_ratio_mean": "IS mean",
    "caopd/is_ratio_max": "IS max",
    "caopd/is_ratio_clipped_share": "IS clipped",
}
FROM_ROLLOUTS = ("answer", "conf format", "acc", "P_acc")
COUNTS = ("step", "distilled", "no sibling")  # shown as whole numbers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the SDPO arms under several settings; a per-step table of what each step did.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", default="outputs/sdpo_stability")
    parser.add_argument("--model_name", default="smollm2")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--max_steps", type=positive_int, default=12)
    parser.add_argument("--num_generations", type=positive_int, default=8, help="K: rollouts per question")
    parser.add_argument("--seed", type=non_negative_int, default=42)
    parser.add_argument("--force", action="store_true", help="redo finished runs")
    parser.add_argument(
        "--report_runs",
        nargs="+",
        metavar="RUN_DIR",
        help="train nothing: table these finished main.py runs (with --save_rollouts) into <output_dir>/steps.md",
    )
    return parser


def train_command(args: argparse.Namespace, variant: str, arm: str) -> list[str]:
    """bench/reproduce.py's command for the arm, into <output_dir>/<variant>/<arm>, with the variant's flags last."""
    steps = str(args.max_steps)
    flags = ["--output_dir", str(Path(args.output_dir) / variant), "--model_name", args.model_name]
    flags += ["--max_steps", steps, "--save_steps", steps, "--seed", str(args.seed)]
    flags += ["--num_generations", str(args.num_generations)]
    settings = reproduce.build_parser().parse_args(flags)
    return reproduce.train_command(settings, arm) + VARIANTS[variant]


def step_rows(run: Path) -> list[dict[str, float | None]]:
    """One row per optimizer step: rollout statistics from ``rollouts/``, the rest from the newest checkpoint's log
    (a step's rollouts, logged at global step s, are trained on in the step the Trainer logs as s + 1)."""
    by_step: dict[int, list[dict]] = defaultdict(list)
    for row in read_rollout_rows(run):
        by_step[row["step"]].append(row)
    if not by_step:
        raise SystemExit(f"error: {run} has no rollout log (rollouts/rank*.jsonl); train it with --save_rollouts")
    checkpoint, _ = latest_complete(run)
    if checkpoint is None:
        raise SystemExit(f"error: {run} has no complete checkpoint to read the log of")
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    logged = {entry["step"]: entry for entry in history if "loss" in entry}
    rows = []
    for step, rollouts in sorted(by_step.items()):
        rates = {row["uid"]: row["p_acc"] for row in rollouts}
        entry = logged.get(step + 1, {})
        rows.append(
            {
                "step": step + 1,
                "answer": sum(parse_answer(row["completion"]) is not None for row in rollouts) / len(rollouts),
                "conf format": sum(parse_confidence(row["completion"]) is not None for row in rollouts) / len(rollouts),
                "acc": sum(row["correct"] for row in rollouts) / len(rollouts),
                "P_acc": sum(rates.values()) / len(rates),
                **{column: entry.get(key) for key, column in LOGGED.items()},
            }
        )
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    """Accuracy and Answer: rate of the rollouts over the first and the last four steps: a collapse shows as a fall."""
    first, last = rows[:4], rows[-4:]

    def mean(part: list[dict], key: str) -> float:
        return sum(row[key] for row in part) / len(part)

    return {
        "acc first 4": mean(first, "acc"),
        "acc last 4": mean(last, "acc"),
        "answer first 4": mean(first, "answer"),
        "answer last 4": mean(last, "answer"),
        "min answer": min(row["answer"] for row in rows),
    }


def markdown_table(rows: list[dict]) -> str:
    columns = ["step", *FROM_ROLLOUTS, *LOGGED.values()]
    shown = [column for column in columns if any(row.get(column) is not None for row in rows)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = [_cell(row.get(column), column in COUNTS) for column in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None, count: bool) -> str:
    if value is None:
        return "-"
    return str(round(value)) if count else f"{value:.3f}"


def report(out: Path, runs: dict[str, list[dict]]) -> str:
    lines = ["# SDPO arms, step by step", "", "| run | acc first 4 | acc last 4 | answer first 4 | answer last 4 |"]
    lines += ["|---|---|---|---|---|"]
    for name, rows in runs.items():
        s = summary(rows)
        lines.append(
            f"| {name} | {s['acc first 4']:.3f} | {s['acc last 4']:.3f} | {s['answer first 4']:.3f} | "
            f"{s['answer last 4']:.3f} |"
        )
    for name, rows in runs.items():
        lines += ["", f"## {name}", "", markdown_table(rows)]
    text = "\n".join(lines) + "\n"
    write_text_atomically(out / "steps.md", text)
    data = {name: {"summary": summary(rows), "steps": rows} for name, rows in runs.items()}
    write_text_atomically(out / "steps.json", json.dumps(data, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir).resolve()
    args.output_dir = str(out)
    if args.report_runs:
        print(report(out, {run: step_rows(Path(run)) for run in args.report_runs}))
        return 0
    plan = [(f"{variant}_{arm}", train_command(args, variant, arm)) for variant in args.variants for arm in args.arms]
    run_plan(plan, out, args.force)
    runs = {f"{variant} / {arm}": step_rows(out / variant / arm) for variant in args.variants for arm in args.arms}
    print(report(out, runs))
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

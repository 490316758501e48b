"""Base vs SDFT vs CaOPD on this machine: train both arms, evaluate all three on held-out questions, compare.

The paper's claim at our scale: self-distillation (SDFT) makes the model overconfident, CaOPD keeps its accuracy
and fixes the confidence. This script checks it end to end with the embedded SmolLM2-135M-Instruct on the
built-in arithmetic task, on CPU, offline:

1. ``base``: the untrained model is evaluated (``eval_arithmetic.py``);
2. ``sdft`` and ``caopd``: ``main.py`` trains each arm from the same weights, on the same questions, with the same
   seed and step budget; the only difference is ``--no_empirical_calibration`` for SDFT;
3. each trained model is evaluated exactly like the base, on questions of the arithmetic ``test`` split, which
   never share a question with the training split;
4. ``eval/compare.py`` writes ``compare.md`` (table with bootstrap 95% intervals) and ``compare.png`` (overlaid
   reliability diagrams); ``summary.md`` says which of the issue's targets hold.

Every stage runs as its own process with the repository's CLIs, so the numbers are what a user gets with the same
commands (``commands.sh`` lists them). A finished stage leaves a ``.done`` marker with its command; re-running the
script skips it, so an interrupted run resumes at the stage that did not finish. A marker whose command differs
from the one now asked for stops the run, so two settings never mix in one folder (``--force`` redoes everything).

    python bench/reproduce.py --output_dir outputs/reproduce
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caopd.atomic import write_text_atomically
from caopd.checkpoints import latest_complete
from caopd.cli import CLIError, parse_args
from caopd.evaluation import parse_evaluation_args
from caopd.metrics import calibration_metrics
from caopd.tasks.arithmetic import LEVELS, generate_questions

ARMS = ("base", "sdft", "caopd")
LABELS = {"base": "base", "sdft": "SDFT", "caopd": "CaOPD"}
QUESTION_SEED = 0  # seed of the held-out question draw; the per-level table regenerates the same questions
# The paper's closing instruction ("..., including the thinking process.") leads SmolLM2-135M's teacher away from
# the Answer line (bench/probe_teacher_format.py: P(Answer) 0.07 SDFT / 0.14 CaOPD against the student's 0.98),
# and both arms trained under it lost the answer format. This wording was the best of ten probed (0.64 / 0.63).
TEACHER_INSTRUCTION = "Respond like the example."
POSITIVE_FLAGS = (
    "max_steps",
    "save_steps",
    "num_prompts_per_batch",
    "num_generations",
    "lora_r",
    "num_questions",
    "num_samples",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train SDFT and CaOPD from the same start, evaluate base/SDFT/CaOPD on held-out questions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", default="outputs/reproduce")
    parser.add_argument("--model_name", default="smollm2")
    train = parser.add_argument_group("training (identical for both arms)")
    train.add_argument("--max_steps", type=int, default=24, help="optimizer steps per arm")
    train.add_argument(
        "--save_steps", type=int, default=4, help="checkpoint every N steps: a killed stage resumes from the last one"
    )
    train.add_argument("--num_prompts_per_batch", type=int, default=2, help="questions per optimizer step")
    train.add_argument("--num_generations", type=int, default=8, help="K: rollouts per question")
    train.add_argument("--learning_rate", type=float, default=3e-4)
    train.add_argument("--lr_scheduler_type", default="constant_with_warmup", help="one warmup step, then this")
    train.add_argument("--full_finetune", action="store_true", help="train all weights instead of LoRA")
    train.add_argument("--lora_r", type=int, default=16)
    train.add_argument("--seed", type=int, default=42)
    wording = train.add_mutually_exclusive_group()
    wording.add_argument(
        "--teacher_instruction",
        default=TEACHER_INSTRUCTION,
        help="closing instruction of both arms' teacher context (main.py --teacher_instruction)",
    )
    wording.add_argument(
        "--paper_teacher_instruction",
        action="store_true",
        help="use the paper's closing instruction instead of --teacher_instruction",
    )
    evaluation = parser.add_argument_group("evaluation (identical for all three)")
    evaluation.add_argument("--num_questions", type=int, default=150, help="held-out questions (test split)")
    evaluation.add_argument("--num_samples", type=int, default=4, help="sampled responses per question")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="sampling temperature of the training rollouts and of the evaluation: P_acc is the success rate at "
        "this temperature, so the confidence is judged against answers sampled the same way",
    )
    evaluation.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--force", action="store_true", help="redo finished stages")
    return parser


def train_command(args: argparse.Namespace, arm: str) -> list[str]:
    command = [
        sys.executable, "main.py",
        "--model_name", args.model_name,
        "--dataset_name", "arithmetic",
        "--output_dir", str(Path(args.output_dir) / arm),
        "--max_steps", str(args.max_steps),
        "--num_prompts_per_batch", str(args.num_prompts_per_batch),
        "--num_generations", str(args.num_generations),
        "--per_device_train_batch_size", str(args.num_generations),
        "--max_prompt_length", "512",
        "--max_completion_length", "40",
        "--learning_rate", str(args.learning_rate),
        "--lr_scheduler_type", args.lr_scheduler_type,
        "--warmup_steps", "1",
        "--temperature", str(args.temperature),
        "--save_steps", str(args.save_steps),
        "--seed", str(args.seed),
        "--no_wandb",
        "--save_rollouts",
    ]  # fmt: skip
    if not args.paper_teacher_instruction:
        command += ["--teacher_instruction", args.teacher_instruction]
    if not args.full_finetune:
        command += ["--use_peft", "--lora_r", str(args.lora_r), "--lora_alpha", str(2 * args.lora_r)]
    if arm == "sdft":
        command.append("--no_empirical_calibration")
    return command


def eval_command(args: argparse.Namespace, arm: str) -> list[str]:
    model = args.model_name if arm == "base" else str(Path(args.output_dir) / arm)
    return [
        sys.executable, "eval_arithmetic.py",
        "--model_path", model,
        "--output_dir", str(Path(args.output_dir) / "eval" / arm),
        "--split", "test",
        "--question_seed", str(QUESTION_SEED),
        "--num_questions", str(args.num_questions),
        "--num_samples", str(args.num_samples),
        "--temperature", str(args.temperature),
        "--top_p", "1.0",
        "--max_new_tokens", "48",
        "--batch_size", "8",
        "--n_bootstrap", str(args.n_bootstrap),
        "--seed", str(args.seed),
    ]  # fmt: skip


def compare_command(args: argparse.Namespace) -> list[str]:
    out = Path(args.output_dir)
    metrics = [str(out / "eval" / arm / "metrics.json") for arm in ARMS]
    labels = [LABELS[arm] for arm in ARMS]
    return [
        sys.executable, "eval/compare.py", *metrics,
        "--labels", *labels,
        "--output_md", str(out / "compare.md"),
        "--output_png", str(out / "compare.png"),
    ]  # fmt: skip


def stages(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, command) in running order: base eval first, then train+eval per arm, then the comparison."""
    plan = [("eval_base", eval_command(args, "base"))]
    for arm in ("sdft", "caopd"):
        plan += [(f"train_{arm}", train_command(args, arm)), (f"eval_{arm}", eval_command(args, arm))]
    return [*plan, ("compare", compare_command(args))]


def check_stage_flags(plan: list[tuple[str, list[str]]]) -> None:
    """Every stage's flags, checked by that stage's own parser before the first stage starts (a bad value would
    otherwise stop the run only when its stage comes, perhaps an hour in)."""
    for name, command in plan:
        try:
            if "main.py" in command:
                parse_args(command[2:])
            elif "eval_arithmetic.py" in command:
                parse_evaluation_args("arithmetic", command[2:])
        except (CLIError, ValueError) as err:
            raise SystemExit(f"error: stage {name}: {err}") from err


def run_stage(name: str, command: list[str], out: Path, force: bool) -> float | None:
    """Run one stage (streaming its output) unless its marker says it is done; its wall seconds, or None if skipped.

    A training stage cut short earlier resumes from its newest complete checkpoint (or starts over when it has
    none), an evaluation cut short replaces what it left; the marker records the stage's command without those
    flags.
    """
    marker = out / "stages" / f"{name}.done"
    shown = shlex.join(command)
    if marker.exists() and not force:
        recorded = marker.read_text().splitlines()[1:2]  # markers list the stage's command after its seconds
        if recorded and recorded[0] != shown:
            raise SystemExit(
                f"error: stage {name} in {out} was done with another command:\n  {recorded[0]}\nnow:\n  {shown}\n"
                "re-run with the same flags, or pass --force (or another --output_dir) to start over"
            )
        print(f"[reproduce] {name}: done earlier, skipped ({marker})", flush=True)
        return None
    print(f"[reproduce] {name}: {shown}", flush=True)
    start = time.monotonic()
    env = {"TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false", **os.environ}
    result = subprocess.run(command + _continue_flags(command, force), cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: stage {name} failed with exit code {result.returncode}; fix it and re-run to resume")
    seconds = time.monotonic() - start
    write_text_atomically(marker, f"{seconds:.1f}\n{shown}\n")
    return seconds


def _continue_flags(command: list[str], force: bool) -> list[str]:
    """For a stage whose output folder an earlier, unfinished attempt wrote into: a training command resumes (or
    starts over), an evaluation replaces the results it left (they were never marked done)."""
    output = Path(command[command.index("--output_dir") + 1]) if "--output_dir" in command else None
    if output is None:
        return []
    if "main.py" not in command:
        left = any((output / name).exists() for name in ("inference.json", "metrics.json"))
        return ["--overwrite"] if left else []
    latest, _ = latest_complete(output)
    if latest is not None and not force:
        return ["--resume_from_checkpoint", "latest"]
    return ["--overwrite_output_dir"] if any(output.glob("checkpoint-*")) else []


def target_checks(runs: dict[str, dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets, each as (statement, holds, measured values)."""
    base, sdft, caopd = runs["base"], runs["sdft"], runs["caopd"]
    kept = min(sdft["accuracy"], caopd["accuracy"])
    return [
        (
            "Both trained arms keep at least half the base accuracy (else the calibration rows are vacuous)",
            kept >= 0.5 * base["accuracy"],
            f"base {base['accuracy']:.3f}, SDFT {sdft['accuracy']:.3f}, CaOPD {caopd['accuracy']:.3f}",
        ),
        (
            "CaOPD ECE <= 1/2 SDFT ECE",
            caopd["ece"] <= 0.5 * sdft["ece"],
            f"{caopd['ece']:.3f} vs {sdft['ece']:.3f}",
        ),
        ("CaOPD |OCG| <= 0.10", abs(caopd["overconfidence_gap"]) <= 0.10, f"{caopd['overconfidence_gap']:+.3f}"),
        ("CaOPD SPR >= 0.5", caopd["spr"] >= 0.5, f"{caopd['spr']:.3f}"),
        (
            "CaOPD accuracy >= SDFT accuracy - 0.02",
            caopd["accuracy"] >= sdft["accuracy"] - 0.02,
            f"{caopd['accuracy']:.3f} vs {sdft['accuracy']:.3f}",
        ),
        (
            "SDFT mean confidence rises toward 1.0 (above base)",
            sdft["mean_confidence"] > base["mean_confidence"],
            f"{base['mean_confidence']:.3f} -> {sdft['mean_confidence']:.3f}",
        ),
    ]


def interval_lines(
    runs: dict[str, dict], keys: tuple[str, ...] = ("accuracy", "ece", "brier_score", "spr")
) -> list[str]:
    """Whether the CaOPD and SDFT 95% bootstrap intervals are disjoint, metric by metric."""
    lines = []
    for key in keys:
        caopd, sdft = (runs[arm].get("bootstrap_95ci", {}).get(key) for arm in ("caopd", "sdft"))
        if caopd and sdft:
            disjoint = caopd[1] < sdft[0] or sdft[1] < caopd[0]
            verdict = "disjoint" if disjoint else "overlapping"
            lines.append(
                f"- {key}: CaOPD [{caopd[0]:.3f}, {caopd[1]:.3f}] vs SDFT [{sdft[0]:.3f}, {sdft[1]:.3f}]: {verdict}"
            )
    return lines


def stated_metrics(out: Path, n_bootstrap: int, seed: int) -> dict[str, dict]:
    """Per run, the metrics (with bootstrap intervals) over the responses that state a confidence.

    The headline counts a missing confidence as 0.0 (the paper's rule). A small model that often leaves the line out
    then looks less confident than it says it is; these numbers show what it says when it does speak.
    """
    stated = {}
    for arm in ARMS:
        items = json.loads((out / "eval" / arm / "inference.json").read_text())
        spoken = [i for i in items if i["confidence"] is not None]
        correct, confidence = [i["correct"] for i in spoken], [i["confidence"] for i in spoken]
        stated[arm] = calibration_metrics(correct, confidence, n_bootstrap=n_bootstrap, seed=seed)
        stated[arm]["share"] = len(spoken) / len(items)
    return stated


def stated_confidence_table(stated: dict[str, dict]) -> str:
    """Markdown table of ``stated_metrics``: the share that states a confidence, then the metrics over those."""
    header = "| run | states a confidence | acc | mean conf | ECE | OCG | n |"
    rows = []
    for arm in ARMS:
        run = stated[arm]
        if not run["n_samples"]:
            rows.append(f"| {LABELS[arm]} | {run['share']:.3f} | - | - | - | - | 0 |")
            continue
        intervals = run.get("bootstrap_95ci", {})
        cells = [_with_interval(run[key], intervals.get(key)) for key in ("accuracy", "mean_confidence", "ece")]
        cells.append(f"{run['overconfidence_gap']:+.3f}")
        rows.append(f"| {LABELS[arm]} | {run['share']:.3f} | " + " | ".join(cells) + f" | {run['n_samples']} |")
    return "\n".join([header, "|---|---|---|---|---|---|---|", *rows]) + "\n"


def _with_interval(value: float, interval: list[float] | None) -> str:
    return f"{value:.3f}" if not interval else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def per_level_table(out: Path, num_questions: int) -> str:
    """Accuracy and mean stated confidence per difficulty level and run: does the confidence track difficulty?"""
    levels = list(generate_questions(num_questions, seed=QUESTION_SEED, split="test")["difficulty"])
    cells: dict[str, dict[str, str]] = {}
    for arm in ARMS:
        items = json.loads((out / "eval" / arm / "inference.json").read_text())
        for level in dict.fromkeys(levels):
            chosen = [i for i in items if levels[i["item_id"]] == level]
            accuracy = sum(i["correct"] for i in chosen) / len(chosen)
            confidence = sum(i["confidence"] or 0.0 for i in chosen) / len(chosen)
            cells.setdefault(level, {})[arm] = f"{accuracy:.2f} / {confidence:.2f}"
    header = "| level | questions | " + " | ".join(f"{LABELS[arm]} acc / conf" for arm in ARMS) + " |"
    rows = [
        f"| {level} | {levels.count(level)} | " + " | ".join(cells[level][arm] for arm in ARMS) + " |"
        for level in sorted(cells, key=lambda name: [lv.name for lv in LEVELS].index(name))
    ]
    return "\n".join([header, "|---|---|" + "---|" * len(ARMS), *rows]) + "\n"


def summary_markdown(
    runs: dict[str, dict], stated: dict[str, dict], table: str, levels: str, timings: dict[str, float]
) -> str:
    lines = ["# Base vs SDFT vs CaOPD (held-out arithmetic questions)", "", table, "## Targets", ""]
    lines += [f"- [{'x' if ok else ' '}] {text}: {measured}" for text, ok, measured in target_checks(runs)]
    lines += ["", "## CaOPD vs SDFT: 95% bootstrap intervals", "", *interval_lines(runs)]
    lines += ["", "## Responses that state a confidence (95% bootstrap intervals)", "", stated_confidence_table(stated)]
    lines += interval_lines(stated, ("mean_confidence", "ece"))
    lines += ["", "## Per difficulty level (confidence: missing counts as 0)", "", levels]
    lines += ["", "## Wall time per stage (this run)", ""]
    lines += [f"- {name}: {seconds / 60:.1f} min" for name, seconds in timings.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in POSITIVE_FLAGS:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    out = Path(args.output_dir).resolve()
    args.output_dir = str(out)
    plan = stages(args)
    check_stage_flags(plan)
    write_text_atomically(out / "commands.sh", "\n".join(shlex.join(command) for _, command in plan) + "\n")
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() and not args.force else {}
    for name, command in plan:
        seconds = run_stage(name, command, out, args.force)
        if seconds is not None:
            timings[name] = seconds
            write_text_atomically(timings_file, json.dumps(timings, indent=2) + "\n")
    runs = {arm: json.loads((out / "eval" / arm / "metrics.json").read_text()) for arm in ARMS}
    levels = per_level_table(out, args.num_questions)
    stated = stated_metrics(out, args.n_bootstrap, args.seed)
    summary = summary_markdown(runs, stated, (out / "compare.md").read_text(), levels, timings)
    write_text_atomically(out / "summary.md", summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The paper's comparison on this machine: train every arm from the same start, evaluate all on held-out questions.

The paper's claims at our scale: self-distillation (SDFT, SDPO) makes the model overconfident, CaOPD keeps the
backbone's accuracy and fixes the confidence, and RL with calibration rewards (RLCR, CAR) pays for its calibration in
accuracy (Table 3). This script runs the arms end to end with the embedded SmolLM2-135M-Instruct on the built-in
arithmetic task, on CPU, offline:

1. ``base``: the untrained model is evaluated (``eval_arithmetic.py``);
2. seven trained arms, each by ``main.py`` from the same weights, on the same questions, with the same seed, step
   budget and rollouts per step (questions x K): ``sdft`` / ``caopd`` (SDFT backbone, without / with CaOPD),
   ``sdpo`` / ``caopd_sdpo`` (SDPO backbone), ``grpo``, ``rlcr`` and ``car`` (TRL's GRPO with the verifier's 0/1
   reward, RLCR's Brier-penalized reward, a margin-separated calibration reward);
3. each trained model is evaluated exactly like the base, on questions of the arithmetic ``test`` split, which
   never share a question with the training split;
4. ``eval/compare.py`` writes the Table-3-shaped ``compare.md`` (bootstrap 95% intervals), ``compare.json`` and
   ``compare.png`` (every arm's reliability diagram); ``summary.md`` says which of the paper's directions hold.

Every stage runs as its own process with the repository's CLIs, so the numbers are what a user gets with the same
commands (``commands.sh`` lists them). A finished stage leaves a ``.done`` marker with its command; re-running the
script skips it, so an interrupted run resumes at the stage that did not finish. A marker whose command differs
from the one now asked for stops the run, so two settings never mix in one folder (``--force`` redoes everything).
``--arms`` runs a subset (``base`` is always evaluated).

``--rescore`` trains and generates nothing: it reads every arm's saved ``eval/<arm>/inference.json`` again under each
confidence reading (``paper``, the CaOPD paper's, and ``percent``, RLCR's evaluation rule) and writes, per reading,
``rescored/<reading>/`` with each arm's metrics, ``compare.md``/``.json``/``.png`` and ``summary.md``.

    python bench/reproduce.py --output_dir outputs/reproduce
    python bench/reproduce.py --output_dir outputs/reproduce --rescore
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from stages import run_plan

from caopd.atomic import write_text_atomically
from caopd.checks import non_negative_int, positive_float, positive_int
from caopd.confidence import CONFIDENCE_READINGS, reading_summary
from caopd.metric_script import reread_confidences
from caopd.metrics import calibration_metrics
from caopd.result_files import read_items
from caopd.tasks.arithmetic import LEVELS, generate_questions
from caopd.user_errors import one_line_errors

# Arm -> (label, main.py flags that make it; None: the untrained model). Only these flags differ between arms.
ARM_FLAGS: dict[str, tuple[str, list[str] | None]] = {
    "base": ("base", None),
    "sdft": ("SDFT", ["--backbone", "sdft", "--no_empirical_calibration"]),
    "caopd": ("CaOPD (SDFT)", ["--backbone", "sdft"]),
    "sdpo": ("SDPO", ["--backbone", "sdpo", "--no_empirical_calibration"]),
    "caopd_sdpo": ("CaOPD (SDPO)", ["--backbone", "sdpo"]),
    "grpo": ("GRPO", ["--backbone", "grpo", "--rl_reward", "correctness"]),
    "rlcr": ("RLCR", ["--backbone", "grpo", "--rl_reward", "rlcr"]),
    "car": ("CAR", ["--backbone", "grpo", "--rl_reward", "car"]),
}
ARMS = tuple(ARM_FLAGS)
LABELS = {arm: label for arm, (label, _) in ARM_FLAGS.items()}
QUESTION_SEED = 0  # seed of the held-out question draw; the per-level table regenerates the same questions
# The paper's closing instruction ("..., including the thinking process.") leads SmolLM2-135M's teacher away from
# the Answer line (bench/probe_teacher_format.py: P(Answer) 0.07 SDFT / 0.14 CaOPD against the student's 0.98),
# and both arms trained under it lost the answer format. This wording was the best of ten probed (0.64 / 0.63).
TEACHER_INSTRUCTION = "Respond like the example."
# At 3e-4 both SDPO arms lost the Answer: line within 12 steps, with either distillation mode; at 1e-4 they train
# stably (bench/sdpo_stability.py, docs/sdpo_stability.md).
SDPO_LEARNING_RATE = 1e-4
SDPO_ARMS = ("sdpo", "caopd_sdpo")
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
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms to run (base always)")
    train = parser.add_argument_group("training (identical for every arm)")
    train.add_argument("--max_steps", type=positive_int, default=24, help="optimizer steps per arm")
    train.add_argument(
        "--save_steps",
        type=positive_int,
        default=4,
        help="checkpoint every N steps: a killed stage resumes from the last one",
    )
    train.add_argument("--num_prompts_per_batch", type=positive_int, default=2, help="questions per optimizer step")
    train.add_argument("--num_generations", type=positive_int, default=8, help="K: rollouts per question")
    train.add_argument("--learning_rate", type=positive_float, default=3e-4)
    train.add_argument(
        "--sdpo_learning_rate",
        type=positive_float,
        default=SDPO_LEARNING_RATE,
        help="learning rate of the SDPO arms (sdpo, caopd_sdpo): at the others' 3e-4 both collapsed within 12 steps "
        "(docs/sdpo_stability.md)",
    )
    train.add_argument("--lr_scheduler_type", default="constant_with_warmup", help="one warmup step, then this")
    train.add_argument("--full_finetune", action="store_true", help="train all weights instead of LoRA")
    train.add_argument("--lora_r", type=positive_int, default=16)
    train.add_argument("--seed", type=non_negative_int, default=42)
    wording = train.add_mutually_exclusive_group()
    wording.add_argument(
        "--teacher_instruction",
        default=TEACHER_INSTRUCTION,
        help="closing instruction of the SDFT arms' teacher context (main.py --teacher_instruction)",
    )
    wording.add_argument(
        "--paper_teacher_instruction",
        action="store_true",
        help="use the paper's closing instruction instead of --teacher_instruction",
    )
    evaluation = parser.add_argument_group("evaluation (identical for every arm)")
    evaluation.add_argument("--num_questions", type=positive_int, default=150, help="held-out questions (test split)")
    evaluation.add_argument("--num_samples", type=positive_int, default=4, help="sampled responses per question")
    parser.add_argument(
        "--temperature",
        type=positive_float,
        default=0.7,
        help="sampling temperature of the training rollouts and of the evaluation: P_acc is the success rate at "
        "this temperature, so the confidence is judged against answers sampled the same way",
    )
    evaluation.add_argument("--n_bootstrap", type=non_negative_int, default=1000)
    parser.add_argument("--force", action="store_true", help="redo finished stages")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="no training or generation: re-read the arms' saved responses under each confidence reading "
        f"({', '.join(CONFIDENCE_READINGS)}) into <output_dir>/rescored/<reading>/",
    )
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
        "--learning_rate", str(args.sdpo_learning_rate if arm in SDPO_ARMS else args.learning_rate),
        "--lr_scheduler_type", args.lr_scheduler_type,
        "--warmup_steps", "1",
        "--temperature", str(args.temperature),
        "--save_steps", str(args.save_steps),
        "--seed", str(args.seed),
        "--no_wandb",
        "--save_rollouts",
    ]  # fmt: skip
    if not args.full_finetune:
        command += ["--use_peft", "--lora_r", str(args.lora_r), "--lora_alpha", str(2 * args.lora_r)]
    flags = ARM_FLAGS[arm][1]
    if flags[1] == "sdft" and not args.paper_teacher_instruction:
        command += ["--teacher_instruction", args.teacher_instruction]
    return command + flags


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


def selected_arms(args: argparse.Namespace) -> list[str]:
    """The arms to run, in the table's order; the untrained base is always one of them."""
    return [arm for arm in ARMS if arm == "base" or arm in args.arms]


def compare_command(args: argparse.Namespace, out: Path | None = None) -> list[str]:
    out = out or Path(args.output_dir)
    arms = selected_arms(args)
    metrics = [str(out / "eval" / arm / "metrics.json") for arm in arms]
    labels = [LABELS[arm] for arm in arms]
    return [
        sys.executable, "eval/compare.py", *metrics,
        "--labels", *labels,
        "--output_md", str(out / "compare.md"),
        "--output_json", str(out / "compare.json"),
        "--output_png", str(out / "compare.png"),
    ]  # fmt: skip


def stages(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, command) in running order: base eval first, then train+eval per arm, then the comparison."""
    plan = [("eval_base", eval_command(args, "base"))]
    for arm in selected_arms(args)[1:]:
        plan += [(f"train_{arm}", train_command(args, arm)), (f"eval_{arm}", eval_command(args, arm))]
    return [*plan, ("compare", compare_command(args))]


def target_checks(runs: dict[str, dict]) -> list[tuple[str, bool, str]]:
    """The paper's directions that these runs can test, each as (statement, holds, measured values)."""
    checks = []
    for plain, calibrated, name in (("sdft", "caopd", "SDFT"), ("sdpo", "caopd_sdpo", "SDPO")):
        if plain not in runs or calibrated not in runs:
            continue
        a, b, base = runs[plain], runs[calibrated], runs["base"]
        checks += [
            (
                f"{name}: both arms keep at least half the base accuracy (else the calibration rows are vacuous)",
                min(a["accuracy"], b["accuracy"]) >= 0.5 * base["accuracy"],
                f"base {base['accuracy']:.3f}, {name} {a['accuracy']:.3f}, CaOPD {b['accuracy']:.3f}",
            ),
            (f"{name}: CaOPD ECE <= 1/2 of {name}'s", b["ece"] <= 0.5 * a["ece"], f"{b['ece']:.3f} vs {a['ece']:.3f}"),
            (f"{name}: CaOPD |OCG| <= 0.10", abs(b["overconfidence_gap"]) <= 0.10, f"{b['overconfidence_gap']:+.3f}"),
            (f"{name}: CaOPD SPR >= 0.5", b["spr"] >= 0.5, f"{b['spr']:.3f}"),
            (
                f"{name}: CaOPD accuracy >= {name}'s - 0.02",
                b["accuracy"] >= a["accuracy"] - 0.02,
                f"{b['accuracy']:.3f} vs {a['accuracy']:.3f}",
            ),
            (
                f"{name}: its mean confidence rises above the base's",
                a["mean_confidence"] > base["mean_confidence"],
                f"{base['mean_confidence']:.3f} -> {a['mean_confidence']:.3f}",
            ),
        ]
    if "caopd_sdpo" in runs:
        for rl in ("rlcr", "car"):
            if rl in runs:
                checks.append(
                    (
                        f"capability tax: {LABELS[rl]} accuracy below CaOPD (SDPO)'s",
                        runs[rl]["accuracy"] < runs["caopd_sdpo"]["accuracy"],
                        f"{runs[rl]['accuracy']:.3f} vs {runs['caopd_sdpo']['accuracy']:.3f}",
                    )
                )
    return checks


def interval_lines(
    runs: dict[str, dict], keys: tuple[str, ...] = ("accuracy", "ece", "brier_score", "spr")
) -> list[str]:
    """Whether each CaOPD arm's 95% bootstrap intervals and its backbone's are disjoint, metric by metric."""
    lines = []
    for plain, calibrated in (("sdft", "caopd"), ("sdpo", "caopd_sdpo")):
        for key in keys:
            ours, theirs = (runs.get(arm, {}).get("bootstrap_95ci", {}).get(key) for arm in (calibrated, plain))
            if ours and theirs:
                verdict = "disjoint" if ours[1] < theirs[0] or theirs[1] < ours[0] else "overlapping"
                lines.append(
                    f"- {key}: {LABELS[calibrated]} [{ours[0]:.3f}, {ours[1]:.3f}] vs {LABELS[plain]} "
                    f"[{theirs[0]:.3f}, {theirs[1]:.3f}]: {verdict}"
                )
    return lines


def stated_metrics(items_by_arm: dict[str, list[dict]], n_bootstrap: int, seed: int) -> dict[str, dict]:
    """Per run, the metrics (with bootstrap intervals) over the responses that state a confidence.

    The headline counts a missing confidence as 0.0 (the paper's rule). A small model that often leaves the line out
    then looks less confident than it says it is; these numbers show what it says when it does speak.
    """
    stated = {}
    for arm, items in items_by_arm.items():
        spoken = [i for i in items if i["confidence"] is not None]
        correct, confidence = [i["correct"] for i in spoken], [i["confidence"] for i in spoken]
        stated[arm] = calibration_metrics(correct, confidence, n_bootstrap=n_bootstrap, seed=seed)
        stated[arm]["share"] = len(spoken) / len(items)
    return stated


def stated_confidence_table(stated: dict[str, dict]) -> str:
    """Markdown table of ``stated_metrics``: the share that states a confidence, then the metrics over those."""
    header = "| run | states a confidence | acc | mean conf | ECE | OCG | n |"
    rows = []
    for arm in stated:
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


def per_level_table(items_by_arm: dict[str, list[dict]]) -> str:
    """Accuracy and mean stated confidence per difficulty level and run: does the confidence track difficulty?"""
    arms = list(items_by_arm)
    num_questions = 1 + max(i["item_id"] for items in items_by_arm.values() for i in items)
    levels = list(generate_questions(num_questions, seed=QUESTION_SEED, split="test")["difficulty"])
    cells: dict[str, dict[str, str]] = {}
    for arm, items in items_by_arm.items():
        for level in dict.fromkeys(levels):
            chosen = [i for i in items if levels[i["item_id"]] == level]
            accuracy = sum(i["correct"] for i in chosen) / len(chosen)
            confidence = sum(i["confidence"] or 0.0 for i in chosen) / len(chosen)
            cells.setdefault(level, {})[arm] = f"{accuracy:.2f} / {confidence:.2f}"
    header = "| level | questions | " + " | ".join(f"{LABELS[arm]} acc / conf" for arm in arms) + " |"
    rows = [
        f"| {level} | {levels.count(level)} | " + " | ".join(cells[level][arm] for arm in arms) + " |"
        for level in sorted(cells, key=lambda name: [lv.name for lv in LEVELS].index(name))
    ]
    return "\n".join([header, "|---|---|" + "---|" * len(arms), *rows]) + "\n"


def summary_markdown(
    runs: dict[str, dict], stated: dict[str, dict], table: str, levels: str, timings: dict[str, float]
) -> str:
    lines = ["# The paper's arms on held-out arithmetic questions", "", table, "## The paper's directions", ""]
    lines += [f"- [{'x' if ok else ' '}] {text}: {measured}" for text, ok, measured in target_checks(runs)]
    lines += ["", "## CaOPD vs its backbone: 95% bootstrap intervals", "", *interval_lines(runs)]
    lines += ["", "## Responses that state a confidence (95% bootstrap intervals)", "", stated_confidence_table(stated)]
    lines += interval_lines(stated, ("mean_confidence", "ece"))
    lines += ["", "## Per difficulty level (confidence: missing counts as 0)", "", levels]
    if timings:
        lines += ["", "## Wall time per stage (this run)", ""]
        lines += [f"- {name}: {seconds / 60:.1f} min" for name, seconds in timings.items()]
    return "\n".join(lines) + "\n"


def arm_items(out: Path, arms: list[str]) -> dict[str, list[dict]]:
    """Each arm's evaluated responses (its ``inference.json``); a ``ValueError`` names a missing or malformed file."""
    items = {}
    for arm in arms:
        path = out / "eval" / arm / "inference.json"
        items[arm] = read_items(str(path), f"arm {arm}")
        for index, item in enumerate(items[arm]):
            if not (isinstance(item.get("response"), str) and isinstance(item.get("correct"), bool)):
                raise ValueError(f"arm {arm} {path}: item {index} needs a string 'response' and a true/false 'correct'")
            if not isinstance(item.get("item_id"), int) or item["item_id"] < 0:
                raise ValueError(f"arm {arm} {path}: item {index} needs a non-negative integer 'item_id'")
    return items


def write_summary(out: Path, runs: dict[str, dict], items: dict[str, list[dict]], args, timings: dict) -> str:
    stated = stated_metrics(items, args.n_bootstrap, args.seed)
    summary = summary_markdown(runs, stated, (out / "compare.md").read_text(), per_level_table(items), timings)
    write_text_atomically(out / "summary.md", summary)
    return summary


def rescore(args: argparse.Namespace, out: Path) -> list[Path]:
    """Every arm's metrics, comparison and summary again from its saved responses, once per confidence reading."""
    arms = selected_arms(args)
    saved = arm_items(out, arms)
    folders = []
    for reading in CONFIDENCE_READINGS:
        folder = out / "rescored" / reading
        items = {arm: reread_confidences(responses, reading) for arm, responses in saved.items()}
        runs = {}
        for arm, responses in items.items():
            runs[arm] = calibration_metrics(
                [i["correct"] for i in responses],
                [i["confidence"] for i in responses],
                n_bootstrap=args.n_bootstrap,
                seed=args.seed,
            )
            runs[arm] |= reading_summary([i["confidence_out_of_range"] for i in responses], reading)
            write_text_atomically(folder / "eval" / arm / "metrics.json", json.dumps(runs[arm], indent=2) + "\n")
        subprocess.run([*compare_command(args, folder), "--overwrite"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        write_summary(folder, runs, items, args, {})
        folders.append(folder)
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in POSITIVE_FLAGS:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    out = Path(args.output_dir).resolve()
    args.output_dir = str(out)
    if args.rescore:
        try:
            folders = rescore(args, out)
        except ValueError as err:
            print(f"error: {err}; run (or re-evaluate) the arms first, without --rescore", file=sys.stderr)
            return 2
        for folder in folders:
            print(f"[rescore] {folder.name}: {folder / 'summary.md'}")
            print((folder / "compare.md").read_text())
        return 0
    timings = run_plan(stages(args), out, args.force)
    arms = selected_arms(args)
    runs = {arm: json.loads((out / "eval" / arm / "metrics.json").read_text()) for arm in arms}
    summary = write_summary(out, runs, arm_items(out, arms), args, timings)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

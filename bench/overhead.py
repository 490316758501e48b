"""The price of CaOPD: CaOPD steps beside their backbone's steps on the same batches, interleaved, timed here.

For each backbone (SDFT, then SDPO) one trainer, built as ``main.py`` builds it (the CPU demo's shapes by default: the
embedded SmolLM2-135M-Instruct, arithmetic, 2 questions x K = 8 rollouts, completions of at most 40 tokens),
alternates the two arms step by step: even steps run CaOPD, odd steps the plain backbone
(``--no_empirical_calibration``: no P_acc in the targets, the full generation limit). The learning rate is 1e-30 by
default, so the fp32 weights never change and both steps of a pair sample with the same seed from the same weights:
the same questions and the same random stream. What differs is what CaOPD itself does: its generation limit is lower
by the tokens it reserves for the confidence line, it trains on the rewritten completions, and (SDPO) the teacher's
reprompt carries the note. CaOPD on SDPO reuses SDPO's rollouts and rewards (paper App. D): no extra sampling.

Printed per backbone: each pair's step times and sampling times, the mean step-time ratio CaOPD / backbone
(targets: SDFT <= 1.03, SDPO <= 1.02), and the share of the CaOPD step spent in CaOPD's own work (sharing the
verdicts, P_acc, the completion rewrite, marking the confidence tokens, its metrics); both arms also log the loss
split of paper Eq. 7, whose cost is printed on its own.

    python bench/overhead.py                 # 8 minutes on 2 CPU cores (2026-12-03: 12 steps of 32 to 46 s)
    python bench/overhead.py --pairs 1 --model_name tests/tiny   # any model folder works
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import TrainerCallback

import caopd.loss_parts
import caopd.step
from caopd.checks import non_negative_int, positive_float, positive_int
from caopd.cli import parse_args
from caopd.tasks import get_task
from caopd.user_errors import one_line_errors
from main import BACKBONES, build_config, load_model_and_tokenizer

CAOPD_WORK = ("share_records", "calibrate", "mark_confidence_tokens", "record_caopd_metrics")


class Stopwatch:
    """Seconds spent per named section, summed per step."""

    def __init__(self):
        self.sections: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, section: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sections[section] += time.perf_counter() - start

        setattr(owner, name, timed)


class AlternateArms(TrainerCallback):
    """Even steps CaOPD, odd steps the plain backbone; both steps of a pair reseeded alike; each step timed."""

    def __init__(self, trainer, stopwatch: Stopwatch, seed: int, backbone: str):
        self.trainer, self.stopwatch, self.seed = trainer, stopwatch, seed
        self.arms = ("CaOPD", backbone.upper())
        self.caopd_limit = trainer.generation_config.max_new_tokens
        self.records: list[dict[str, float | str]] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        calibrate = state.global_step % 2 == 0
        args.empirical_calibration = calibrate
        self.trainer.generation_config.max_new_tokens = self.caopd_limit if calibrate else args.max_completion_length
        torch.manual_seed(self.seed + state.global_step // 2)
        self.stopwatch.sections.clear()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sections = self.stopwatch.sections
        self.records.append(
            {
                "arm": self.arms[(state.global_step - 1) % 2],
                "step": time.perf_counter() - self._start,
                "sample": sections["sample"],
                "caopd": sections["caopd"],
                "split": sections["split"],
            }
        )


def build_trainer(argv: list[str]):
    """The backbone's trainer exactly as main.py builds it from these flags (one process)."""
    args = parse_args(argv)
    config = build_config(args, world_size=1)
    task = get_task(args.dataset_name, args.verifier, args.tooluse_match)
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, config.bf16)
    return BACKBONES[args.backbone][1](
        model=model, args=config, train_dataset=task.load(args.train_data), task=task, processing_class=tokenizer
    )


def time_backbone(backbone: str, flags: list[str], seed: int) -> list[dict[str, float | str]]:
    """Alternate CaOPD and plain steps of one backbone; one record per step."""
    trainer = build_trainer([*flags, "--backbone", backbone])
    stopwatch = Stopwatch()
    stopwatch.wrap(trainer, "sample_rollouts", "sample")
    for method in CAOPD_WORK:
        stopwatch.wrap(trainer, method, "caopd")
    stopwatch.wrap(caopd.step, "per_token_divergence_by_row", "split")
    alternate = AlternateArms(trainer, stopwatch, seed, backbone)
    trainer.add_callback(alternate)
    try:
        trainer.train()
    finally:
        caopd.step.per_token_divergence_by_row = caopd.loss_parts.per_token_divergence_by_row
    return alternate.records


def report(backbone: str, records: list[dict[str, float | str]], target: float) -> None:
    plain = backbone.upper()
    print(f"\n{backbone}: CaOPD on {plain} against {plain}, step pairs on the same batches")
    print(
        f"{'pair':>4} {'CaOPD step s':>13} {plain + ' step s':>12} {'ratio':>6} {'sampling s':>11} {'CaOPD own s':>12}"
    )
    ratios = []
    for pair in range(len(records) // 2):
        caopd_step, plain_step = records[2 * pair], records[2 * pair + 1]
        ratios.append(caopd_step["step"] / plain_step["step"])
        sampling = f"{caopd_step['sample']:.1f}/{plain_step['sample']:.1f}"
        print(
            f"{pair:>4} {caopd_step['step']:>13.2f} {plain_step['step']:>12.2f} {ratios[-1]:>6.3f} {sampling:>11}"
            f" {caopd_step['caopd']:>12.4f}"
        )
    mean = {arm: statistics.mean(r["step"] for r in records if r["arm"] == arm) for arm in ("CaOPD", plain)}
    caopd_records = [r for r in records if r["arm"] == "CaOPD"]
    own = statistics.mean(r["caopd"] for r in caopd_records)
    split = statistics.mean(r["split"] for r in caopd_records)
    print(f"mean step: CaOPD {mean['CaOPD']:.2f} s, {plain} {mean[plain]:.2f} s")
    ratio = mean["CaOPD"] / mean[plain]
    print(
        f"step-time ratio CaOPD / {plain}: {ratio:.3f} (mean of pairs {statistics.mean(ratios):.3f}; "
        f"target <= {target})"
    )
    print(
        f"CaOPD's own work (share verdicts, P_acc, rewrite, confidence tokens, metrics): {own:.4f} s per step, "
        f"{100 * own / mean['CaOPD']:.3f} % of the CaOPD step"
    )
    print(f"loss split (paper Eq. 7, both arms): {split:.4f} s per step, {100 * split / mean['CaOPD']:.3f} %")


TARGETS = {"sdft": 1.03, "sdpo": 1.02}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=positive_int, default=3, help="CaOPD/backbone step pairs to time, per backbone")
    parser.add_argument("--backbones", nargs="+", choices=tuple(TARGETS), default=list(TARGETS))
    parser.add_argument("--model_name", default="smollm2")
    parser.add_argument("--output_dir", default="outputs/bench_overhead")
    parser.add_argument(
        "--learning_rate",
        type=positive_float,
        default=1e-30,
        help="1e-30 leaves fp32 weights bit for bit as they are, so both steps of a pair sample from the same weights",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    options = parser.parse_args(argv)

    flags = ["--model_name", options.model_name, "--dataset_name", "arithmetic", "--output_dir", options.output_dir]
    flags += ["--max_steps", str(2 * options.pairs), "--num_prompts_per_batch", "2", "--num_generations", "8"]
    flags += ["--per_device_train_batch_size", "8", "--max_completion_length", "40", "--max_prompt_length", "512"]
    flags += ["--learning_rate", str(options.learning_rate), "--warmup_steps", "0", "--no_wandb"]
    flags += ["--save_steps", str(10**9), "--seed", str(options.seed), "--lr_scheduler_type", "constant"]
    flags += ["--overwrite_output_dir"]
    for backbone in options.backbones:
        report(backbone, time_backbone(backbone, flags, options.seed), TARGETS[backbone])
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

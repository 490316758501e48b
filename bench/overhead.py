"""The price of CaOPD: CaOPD and SDFT optimizer steps on the same batches, interleaved, timed on this machine.

One trainer, built as ``main.py`` builds it (the CPU demo's shapes by default: the embedded SmolLM2-135M-Instruct,
arithmetic, 2 questions x K = 8 rollouts, completions of at most 40 tokens), alternates the two arms step by step:
even steps run CaOPD, odd steps the SDFT baseline (``--no_empirical_calibration``: no P_acc in the targets, the
full generation limit). The learning rate is 1e-30 by default, so the fp32 weights never change and both steps of a pair
sample with the same seed from the same weights: the same questions and the same random stream. What differs is
what CaOPD itself does: its generation limit is lower by the tokens it reserves for the confidence line, and it
trains on the rewritten completions.

Printed: each pair's step times and sampling times, the mean step-time ratio CaOPD / SDFT (target <= 1.03), and
the share of the CaOPD step spent in CaOPD's own work: verifying the rollouts, gathering the verdicts, P_acc, the
completion rewrite and the teacher contexts (the time of ``_prepare_training_batch`` minus sampling and TRL's
teacher-input build).

    python bench/overhead.py                 # about 16 minutes on 2 CPU cores (6 steps of about 150 s)
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

from caopd.cli import parse_args
from caopd.tasks import get_task
from distil_trainer import DistilTrainer
from main import build_config, load_model_and_tokenizer

ARMS = ("CaOPD", "SDFT")


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
    """Even steps CaOPD, odd steps SDFT; both steps of a pair reseeded alike; each step timed."""

    def __init__(self, trainer: DistilTrainer, stopwatch: Stopwatch, seed: int):
        self.trainer, self.stopwatch, self.seed = trainer, stopwatch, seed
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
        total = time.perf_counter() - self._start
        sections = self.stopwatch.sections
        own = sections["prepare"] - sections["sample"] - sections["teacher_inputs"]
        arm = ARMS[(state.global_step - 1) % 2]
        self.records.append({"arm": arm, "step": total, "sample": sections["sample"], "caopd": own})


def build_trainer(argv: list[str]) -> DistilTrainer:
    """A DistilTrainer exactly as main.py builds it from these flags (one process)."""
    args = parse_args(argv)
    config = build_config(args, world_size=1)
    task = get_task(args.dataset_name, args.verifier, args.tooluse_match)
    model, tokenizer = load_model_and_tokenizer(args.model_name, config.bf16)
    return DistilTrainer(
        model=model, args=config, train_dataset=task.load(args.train_data), task=task, processing_class=tokenizer
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="CaOPD/SDFT step pairs to time")
    parser.add_argument("--model_name", default="smollm2")
    parser.add_argument("--output_dir", default="outputs/bench_overhead")
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=1e-30,
        help="1e-30 leaves fp32 weights bit for bit as they are, so both steps of a pair sample from the same weights",
    )
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    if options.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {options.pairs}")

    flags = ["--model_name", options.model_name, "--dataset_name", "arithmetic", "--output_dir", options.output_dir]
    flags += ["--max_steps", str(2 * options.pairs), "--num_prompts_per_batch", "2", "--num_generations", "8"]
    flags += ["--per_device_train_batch_size", "8", "--max_completion_length", "40", "--max_prompt_length", "512"]
    flags += ["--learning_rate", str(options.learning_rate), "--warmup_steps", "0", "--no_wandb"]
    flags += ["--save_steps", str(10**9), "--seed", str(options.seed), "--lr_scheduler_type", "constant"]
    trainer = build_trainer(flags)
    stopwatch = Stopwatch()
    stopwatch.wrap(trainer, "_prepare_training_batch", "prepare")
    stopwatch.wrap(trainer, "sample_rollouts", "sample")
    stopwatch.wrap(trainer.teacher_context_builder, "build", "teacher_inputs")
    alternate = AlternateArms(trainer, stopwatch, options.seed)
    trainer.add_callback(alternate)
    trainer.train()

    print(
        f"\n{'pair':>4} {'CaOPD step s':>13} {'SDFT step s':>12} {'ratio':>6} {'sampling s':>11}"
        f" {'CaOPD own work s':>17}"
    )
    records = alternate.records
    ratios = []
    for pair in range(len(records) // 2):
        caopd, sdft = records[2 * pair], records[2 * pair + 1]
        ratios.append(caopd["step"] / sdft["step"])
        sampling = f"{caopd['sample']:.1f}/{sdft['sample']:.1f}"
        print(
            f"{pair:>4} {caopd['step']:>13.2f} {sdft['step']:>12.2f} {ratios[-1]:>6.3f} {sampling:>11}"
            f" {caopd['caopd']:>17.4f}"
        )
    caopd_steps = [r for r in records if r["arm"] == "CaOPD"]
    sdft_steps = [r for r in records if r["arm"] == "SDFT"]
    mean = {
        arm: statistics.mean(r["step"] for r in rows) for arm, rows in (("CaOPD", caopd_steps), ("SDFT", sdft_steps))
    }
    own = statistics.mean(r["caopd"] for r in caopd_steps)
    print(f"\nmean step: CaOPD {mean['CaOPD']:.2f} s, SDFT {mean['SDFT']:.2f} s")
    ratio = mean["CaOPD"] / mean["SDFT"]
    print(f"step-time ratio CaOPD / SDFT: {ratio:.3f} (mean of pairs {statistics.mean(ratios):.3f}; target <= 1.03)")
    print(
        f"CaOPD's own work (verify, gather, P_acc, rewrite, teacher contexts): {own:.4f} s per step, "
        f"{100 * own / mean['CaOPD']:.3f} % of the CaOPD step"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

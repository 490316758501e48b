"""The settings the paper's experiments share: the paper's scale on GPUs by default, a small CPU scale on request.

``bench/ood.py``, ``bench/continual.py`` and ``bench/k_ablation.py`` build their stages (``bench/stages.py``) from
these: one training command and one evaluation command per arm and task, so that the arms differ only in the flags
that make them.

- GPU (default): Qwen3-8B, the paper's Table 6 settings (K = 8, 32 questions per step, 2,048 + 8,192 tokens, the
  task's learning rate, gradient checkpointing) under ``accelerate launch`` with DeepSpeed ZeRO-3 on
  ``--num_processes`` GPUs; training rows from ``data/prepare_*.py``; the paper's validation setting with vLLM.
- ``--cpu_scale``: the embedded SmolLM2-135M-Instruct with LoRA, a few steps of one question x K = 4, 48-token
  completions, plain ``python``; rows from the shared evaluation sets (``../shared/data``), split so that no question
  is both trained on and evaluated (the training splits are not at hand here).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from caopd.checks import non_negative_int, positive_int

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "caopd_eval"
PAPER_LR = {"tooluse": "2e-5", "science": "1e-5", "arithmetic": "2e-5"}
EVAL_SCRIPT = {"tooluse": "eval_tooluse.py", "science": "eval_science.py", "arithmetic": "eval_arithmetic.py"}
# Arm -> the main.py flags that make it (the paper's SDFT and SDPO backbones, with and without CaOPD).
ARMS = {
    "sdft": ["--backbone", "sdft", "--no_empirical_calibration"],
    "caopd": ["--backbone", "sdft"],
    "sdpo": ["--backbone", "sdpo", "--no_empirical_calibration"],
    "caopd_sdpo": ["--backbone", "sdpo"],
}


def add_scale_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--cpu_scale", action="store_true", help="the embedded model at small settings (CPU)")
    parser.add_argument("--model_name", default=None, help="default: Qwen/Qwen3-8B, or smollm2 with --cpu_scale")
    parser.add_argument(
        "--max_steps", type=positive_int, default=None, help="default: one epoch, or 4 with --cpu_scale"
    )
    parser.add_argument("--num_processes", type=positive_int, default=8, help="GPUs (not with --cpu_scale)")
    parser.add_argument("--seed", type=non_negative_int, default=42)
    parser.add_argument("--force", action="store_true", help="redo finished stages")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="with --cpu_scale: 4 questions x 1 sample x 8 tokens per evaluation (tests)",
    )


@dataclass(frozen=True)
class Scale:
    """How to launch training and what both training and evaluation are given, at one scale."""

    cpu: bool
    model: str
    max_steps: int | None
    num_processes: int
    seed: int
    quick: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Scale:
        model = args.model_name or ("smollm2" if args.cpu_scale else "Qwen/Qwen3-8B")
        steps = args.max_steps if args.max_steps is not None else (4 if args.cpu_scale else None)
        if steps is not None and steps < 1:
            raise SystemExit(f"error: --max_steps must be positive, got {steps}")
        if args.num_processes < 1:
            raise SystemExit(f"error: --num_processes must be positive, got {args.num_processes}")
        if args.quick and not args.cpu_scale:
            raise SystemExit("error: --quick shortens the CPU scale's evaluations; pass it with --cpu_scale")
        return cls(args.cpu_scale, model, steps, args.num_processes, args.seed, args.quick)

    def launch(self) -> list[str]:
        if self.cpu:
            return [sys.executable]
        config = str(ROOT / "scripts" / "accelerate" / "zero3.yaml")
        return ["accelerate", "launch", "--config_file", config, "--num_processes", str(self.num_processes)]

    def train(self, arm_flags: list[str], task: str, data: str | None, output: Path, model: str | None = None,
              generations: int = 8) -> list[str]:  # fmt: skip
        """``main.py`` training ``model`` (default: the scale's) on ``task``, K = ``generations`` at CPU scale."""
        flags = ["--model_name", model or self.model, "--dataset_name", task, "--output_dir", str(output)]
        flags += ["--seed", str(self.seed), "--save_steps", "2" if self.cpu else "50", "--save_rollouts"]
        flags += ["--train_data", data] if data else []
        flags += ["--max_steps", str(self.max_steps)] if self.max_steps else []
        if self.cpu:
            flags += ["--num_prompts_per_batch", "1", "--num_generations", str(generations)]
            flags += ["--per_device_train_batch_size", str(generations), "--max_completion_length", "48"]
            flags += ["--max_prompt_length", "1400", "--overlong_prompts", "drop", "--use_peft", "--lora_r", "16"]
            flags += ["--lora_alpha", "32", "--learning_rate", "3e-4", "--warmup_steps", "0", "--no_wandb"]
            flags += ["--temperature", "0.7"]
        else:
            flags += ["--num_prompts_per_batch", "32", "--num_generations", str(generations)]
            flags += ["--max_prompt_length", "2048", "--max_completion_length", "8192", "--gradient_checkpointing"]
            flags += ["--learning_rate", PAPER_LR[task]]
        return [*self.launch(), str(ROOT / "main.py"), *flags, *arm_flags]

    def evaluate(self, task: str, data: str | None, model_path: str, output: Path) -> list[str]:
        """The task's evaluation of ``model_path`` (the paper's validation setting; small at CPU scale)."""
        flags = ["--model_path", model_path, "--output_dir", str(output), "--seed", str(self.seed)]
        flags += ["--data", data] if data else []
        if self.cpu:
            questions, samples, tokens, bootstrap = (4, 1, 8, 0) if self.quick else (60, 2, 64, 200)
            flags += ["--num_samples", str(samples), "--max_new_tokens", str(tokens), "--temperature", "0.7"]
            flags += ["--top_p", "1.0", "--n_bootstrap", str(bootstrap)]
            flags += ["--max_prompt_length", "1400", "--overlong_prompts", "drop"]
            flags += ["--limit", str(questions)] if task != "arithmetic" else ["--num_questions", str(questions)]
        else:
            flags += ["--backend", "vllm"]
        return [sys.executable, str(ROOT / EVAL_SCRIPT[task]), *flags]


def split_rows(source: Path, train: Path, test: Path, train_rows: int) -> None:
    """The first ``train_rows`` rows of a saved dataset as JSON Lines for training, the rest for evaluation."""
    from datasets import load_from_disk

    if not source.is_dir():
        raise SystemExit(f"error: {source} not found: --cpu_scale takes its rows from the shared evaluation sets")
    rows = load_from_disk(str(source))
    if train.is_file() and test.is_file():
        return
    train.parent.mkdir(parents=True, exist_ok=True)
    rows.select(range(train_rows)).to_json(str(train))
    rows.select(range(train_rows, len(rows))).to_json(str(test))


Stage = tuple[str, list[str]]


def compare_stage(out: Path, labels: list[str]) -> Stage:
    """eval/compare.py over the runs' metrics (``out/eval/<label with / as _>/metrics.json``): markdown, JSON, PNG."""
    metrics = [str(out / "eval" / label.replace("/", "_") / "metrics.json") for label in labels]
    command = [sys.executable, str(ROOT / "eval" / "compare.py"), *metrics, "--labels", *labels]
    command += ["--output_md", str(out / "compare.md"), "--output_json", str(out / "compare.json")]
    return ("compare", [*command, "--output_png", str(out / "compare.png")])


def experiment_main(description: str, plan: Callable[..., list[Stage]], argv: list[str] | None) -> int:
    """An experiment script's command line: the scale flags and --arms, then ``plan``'s stages, resumably."""
    from stages import run_plan

    parser = argparse.ArgumentParser(description=description)
    add_scale_flags(parser)
    parser.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=["sdft", "caopd"])
    args = parser.parse_args(argv)
    out = Path(args.output_dir).resolve()
    run_plan(plan(args, Scale.from_args(args), out), out, args.force)
    print((out / "compare.md").read_text())
    return 0

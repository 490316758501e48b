"""Command-line flags (the original release's names and defaults, plus what a user needs) and YAML configs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from caopd.prompt_lengths import OVERLONG_CHOICES
from caopd.targets import TEACHER_MODES
from caopd.tasks import TASK_NAMES
from caopd.verifiers import TOOLUSE_MATCHES


class CLIError(ValueError):
    """A bad flag value or config file: reported as one line, never as a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accelerate launch main.py",
        description="Calibration-Aware On-Policy Distillation (CaOPD) on TRL's self-distillation trainer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--config", help="YAML file with any of these flags (keys = flag names); the command line wins")
    run.add_argument("--output_dir", help="where checkpoints, the final model and the run config go (required)")
    run.add_argument("--model_name", default="Qwen/Qwen3-8B", help="hub id, local directory, or 'smollm2' (embedded)")
    run.add_argument("--dataset_name", default="tooluse", choices=TASK_NAMES, help="task: data format and verifier")
    run.add_argument(
        "--verifier",
        help="with --dataset_name custom: exact_match, numeric, mcq_letter, regex:PATTERN, tooluse or module:function",
    )
    run.add_argument("--train_data", help="training set (save_to_disk folder, .json or .jsonl); default per task")
    run.add_argument(
        "--tooluse_match",
        choices=TOOLUSE_MATCHES,
        default="sequence",
        help="tool-use rule for P_acc (and evaluation): every call in order (sequence), the first call (first_call: "
        "the original's P_acc and calibration script), or tool names + merged inputs (merged: its accuracy script)",
    )
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' for the newest in output_dir")
    run.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over in an --output_dir that holds checkpoints of an earlier run (they are deleted)",
    )
    run.add_argument(
        "--no_wandb", action="store_true", help="do not report to Weights & Biases (same as --report_to none)"
    )
    run.add_argument("--report_to", default="wandb", help="Trainer integrations: wandb, tensorboard, none, ...")
    run.add_argument("--save_rollouts", action="store_true", help="write every rollout and its targets as JSONL")
    run.add_argument(
        "--enable_thinking",
        action="store_true",
        help="turn on the thinking mode of chat templates that have the switch (Qwen3); off as in the paper",
    )

    caopd = parser.add_argument_group("CaOPD")
    caopd.add_argument(
        "--no_empirical_calibration",
        action="store_true",
        help="plain SDFT baseline: no P_acc in the targets (P_acc is still measured and logged)",
    )
    caopd.add_argument(
        "--self_consistency",
        action="store_true",
        help="no verifier: P_acc = share of rollouts equivalent to a greedy reference answer under the teacher context",
    )
    caopd.add_argument(
        "--equivalence",
        default="task",
        help="with --self_consistency: task (the task's answer extraction agrees), normalized_exact, a built-in "
        "verifier name, regex:PATTERN, or module:function",
    )
    caopd.add_argument("--teacher_context_mode", default="demo", choices=TEACHER_MODES)
    caopd.add_argument(
        "--teacher_instruction",
        default=None,
        help="closing instruction of the teacher context instead of the paper's wording for the mode "
        "(e.g. 'Now answer with a response of your own in the same format.')",
    )
    caopd.add_argument("--num_generations", type=int, default=8, help="K: rollouts per question (P_acc = correct / K)")
    caopd.add_argument(
        "--num_prompts_per_batch",
        type=int,
        default=32,
        help="distinct questions per optimizer step (the paper's question batch); each brings K rollouts",
    )
    caopd.add_argument("--ref_model_mixup_alpha", type=float, default=0.01, help="EMA update rate of the teacher")
    caopd.add_argument("--teacher_model_kind", default="ema", choices=("ema", "base", "live"))

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--learning_rate", type=float, default=2e-5)
    optim.add_argument("--num_train_epochs", type=float, default=1)
    optim.add_argument("--max_steps", type=int, default=-1, help="optimizer steps; overrides --num_train_epochs")
    optim.add_argument("--per_device_train_batch_size", type=int, default=8, help="rollouts per device per micro-step")
    optim.add_argument("--warmup_steps", type=int, default=10)
    optim.add_argument("--weight_decay", type=float, default=0.01)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--lr_scheduler_type", default="linear")
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on if the GPU has it"
    )
    optim.add_argument("--save_steps", type=int, default=50)
    optim.add_argument("--save_total_limit", type=int, default=None)
    optim.add_argument("--logging_steps", type=int, default=1)

    distil = parser.add_argument_group("distillation")
    distil.add_argument("--distillation_alpha", type=float, default=1.0, help="0 forward KL, 1 reverse KL, else JSD")
    distil.add_argument("--distillation_topk", type=int, default=100, help="top-k logits of the student's support")
    distil.add_argument(
        "--num_loss_tokens_to_skip",
        type=int,
        default=3,
        help="first completion tokens left out of the loss (the original release's setting: 3)",
    )
    distil.add_argument(
        "--no_shared_prefix",
        action="store_true",
        help="forward every rollout's prompt (TRL's way) instead of each distinct prompt once (same loss, slower)",
    )
    distil.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    distil.add_argument("--max_prompt_length", type=int, default=1024)
    distil.add_argument(
        "--overlong_prompts",
        choices=OVERLONG_CHOICES,
        default="error",
        help="prompts longer than --max_prompt_length: stop with a message (error), leave them out (drop), or "
        "cut their beginning as TRL does (truncate)",
    )
    distil.add_argument("--max_completion_length", type=int, default=1024, help="includes the appended confidence")
    distil.add_argument(
        "--max_teacher_prompt_length", type=int, default=None, help="default: prompt + completion + 128"
    )

    peft = parser.add_argument_group("LoRA")
    peft.add_argument("--use_peft", action="store_true", help="train LoRA adapters; the EMA teacher is an adapter too")
    peft.add_argument("--lora_r", type=int, default=16)
    peft.add_argument("--lora_alpha", type=int, default=32)
    peft.add_argument("--lora_dropout", type=float, default=0.05)

    vllm = parser.add_argument_group("generation backend")
    vllm.add_argument(
        "--use_vllm", action=argparse.BooleanOptionalAction, default=None, help="default: on if vLLM and a GPU exist"
    )
    vllm.add_argument("--vllm_mode", default="colocate", choices=("colocate", "server"))
    vllm.add_argument("--vllm_server_host", default="0.0.0.0")
    vllm.add_argument("--vllm_server_port", type=int, default=8000)
    vllm.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.3)
    vllm.add_argument(
        "--print_vllm_max_model_len",
        action="store_true",
        help="print the vLLM context length these settings need (longest prompt sent + completion) and exit; "
        "scripts/run_vllm_server.sh sizes its server with it",
    )
    return parser


_POSITIVE = ("num_generations", "num_prompts_per_batch", "per_device_train_batch_size", "max_prompt_length")
_POSITIVE += ("max_completion_length", "save_steps", "logging_steps", "distillation_topk", "lora_r", "lora_alpha")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags from the command line over flags from ``--config``; every bad value raises CLIError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**_read_config(args.config, parser))
        args = parser.parse_args(argv)
    _validate(args)
    return args


def _read_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise CLIError(f"--config {path}: cannot read it ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise CLIError(f"--config {path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(values, dict):
        raise CLIError(f"--config {path}: expected a mapping of flag names to values")
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(actions) - {"help"})
    if unknown:
        raise CLIError(f"--config {path}: unknown key(s) {', '.join(unknown)}; keys are flag names without '--'")
    for key, value in values.items():
        action = actions[key]
        if action.choices is not None and value not in action.choices:
            raise CLIError(
                f"--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}"
            )
        if action.type is not None and value is not None:
            try:
                values[key] = action.type(value)
            except (TypeError, ValueError) as err:
                raise CLIError(f"--config {path}: {key}={value!r} is not a valid {action.type.__name__}") from err
    return values


def _validate(args: argparse.Namespace) -> None:
    if not args.output_dir:
        raise CLIError("--output_dir is required (on the command line or in --config)")
    for name in _POSITIVE:
        if getattr(args, name) < 1:
            raise CLIError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if not 0.0 <= args.ref_model_mixup_alpha <= 1.0:
        raise CLIError(f"--ref_model_mixup_alpha is an EMA rate in [0, 1], got {args.ref_model_mixup_alpha}")
    if not 0.0 <= args.distillation_alpha <= 1.0:
        raise CLIError(
            f"--distillation_alpha must lie in [0, 1] (0 forward KL, 1 reverse KL), got {args.distillation_alpha}"
        )
    if args.num_loss_tokens_to_skip < 0:
        raise CLIError(f"--num_loss_tokens_to_skip must be 0 or more, got {args.num_loss_tokens_to_skip}")
    if args.temperature <= 0:
        raise CLIError(f"--temperature must be positive, got {args.temperature}")
    if args.learning_rate <= 0:
        raise CLIError(f"--learning_rate must be positive, got {args.learning_rate}")
    if not 0.0 < args.vllm_gpu_memory_utilization <= 1.0:
        raise CLIError(f"--vllm_gpu_memory_utilization must lie in (0, 1], got {args.vllm_gpu_memory_utilization}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise CLIError(f"--max_steps must be positive (or -1 to train --num_train_epochs), got {args.max_steps}")
    if args.num_train_epochs <= 0 and args.max_steps == -1:
        raise CLIError(f"--num_train_epochs must be positive, got {args.num_train_epochs}")


def gradient_accumulation_steps(args: argparse.Namespace, world_size: int) -> int:
    """Micro-steps per optimizer step so that one step sees num_prompts_per_batch questions x K rollouts."""
    rollouts = args.num_prompts_per_batch * args.num_generations
    per_micro_step = args.per_device_train_batch_size * world_size
    if rollouts % per_micro_step:
        raise CLIError(
            f"--num_prompts_per_batch {args.num_prompts_per_batch} x --num_generations {args.num_generations} = "
            f"{rollouts} rollouts per step is not a multiple of --per_device_train_batch_size "
            f"{args.per_device_train_batch_size} x {world_size} process(es) = {per_micro_step}; change one of them"
        )
    return rollouts // per_micro_step

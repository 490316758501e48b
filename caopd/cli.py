"""Command-line flags (the original release's names and defaults, plus what a user needs) and YAML configs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from caopd.atomic import output_folder_problem
from caopd.checks import (
    finite_float,
    integer,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    probability,
)
from caopd.confidence import CONFIDENCE_READINGS, DEFAULT_READING, READING_HELP
from caopd.last_line import end_with, rank
from caopd.prompt_lengths import OVERLONG_CHOICES
from caopd.targets import TEACHER_MODES, closing_instruction
from caopd.tasks import TASK_NAMES
from caopd.verifiers import TOOLUSE_MATCHES


class CLIError(ValueError):
    """A bad flag value or config file: reported as one line, never as a traceback."""


BACKBONES = {
    "sdft": "TRL's SDFTTrainer",
    "sdpo": "TRL's SDPOTrainer",
    "grpo": "TRL's GRPOTrainer (the RL baselines)",
}
SDPO = ("sdpo",)
BOTH = ("sdft", "sdpo")
POLICY_GRADIENT = ("sdpo", "grpo")
# Settings of TRL's backbone configs, under TRL's names: (type, backbones that have them, help).
BACKBONE_SETTINGS: dict[str, tuple[type, tuple[str, ...], str]] = {
    "distillation_mode": (
        str,
        BOTH,
        "topk_logits, full_logits or sampled_token (defaults: sdft topk_logits, sdpo sampled_token)",
    ),
    "distillation_is_clip": (float, BOTH, "rollout importance-sampling clip (TRL: 2.0, the paper's Table 6)"),
    "distillation_add_tail": (bool, BOTH, "top-k distillation: a bucket for the mass outside the top k"),
    "distillation_weight": (float, SDPO, "loss = (1 - w) x policy-gradient loss + w x distillation loss (TRL: 1.0)"),
    "success_reward_threshold": (float, SDPO, "reward a rollout needs to count as successful (TRL: 1.0)"),
    "dont_reprompt_on_self_success": (bool, SDPO, "a successful rollout is not its own teacher (TRL: on)"),
    "include_environment_feedback": (bool, SDPO, "show the rows' 'feedback' column to the teacher (TRL: off)"),
    "environment_feedback_only_without_solution": (bool, SDPO, "feedback only where no rollout succeeded"),
    "remove_thinking_from_demonstration": (bool, SDPO, "strip <think>...</think> from the solution shown"),
    "reprompt_template": (str, SDPO, "teacher prompt: {prompt}{solution}{feedback} + closing instruction"),
    "solution_template": (str, SDPO, "how the successful rollout is shown: {successful_previous_attempt}"),
    "feedback_template": (str, SDPO, "how environment feedback is shown: {feedback_raw}"),
    "loss_type": (str, POLICY_GRADIENT, "policy-gradient normalization: grpo, bnpo, dr_grpo or dapo (TRL: dapo)"),
    "epsilon": (float, POLICY_GRADIENT, "policy-gradient ratio clip (TRL: 0.2)"),
    "epsilon_high": (float, POLICY_GRADIENT, "upper ratio clip (TRL: epsilon)"),
    "importance_sampling_level": (str, POLICY_GRADIENT, "policy-gradient ratio per token or sequence (TRL: token)"),
    "scale_rewards": (str, POLICY_GRADIENT, "advantage scaling: group, batch or none (TRL: group)"),
    "mask_truncated_completions": (bool, POLICY_GRADIENT, "leave completions cut by the length limit out of the loss"),
    "rl_reward": (
        str,
        ("grpo",),
        "correctness (GRPO), rlcr (RLCR's gated format + accuracy + Brier terms, 0.5 each, rewards not rescaled) or "
        "car (the same with a margin-separated term, CAR's stated properties; its exact formula is not public "
        "here); default correctness",
    ),
    "car_margin": (float, ("grpo",), "rl_reward car: a correct answer's calibration term >= margin above wrong (0.5)"),
}
# Distillation settings (flag: default) that the GRPO backbone, which has no teacher, refuses when changed.
DISTILLATION_ONLY = {
    "ref_model_mixup_alpha": 0.01,
    "teacher_model_kind": "ema",
    "distillation_alpha": 1.0,
    "distillation_topk": 100,
    "max_teacher_prompt_length": None,
    "num_loss_tokens_to_skip": None,
    "no_empirical_calibration": False,
    "self_consistency": False,
    "equivalence": "task",
    "chunked_loss": True,
    "loss_chunk_size": 1024,
}
SDFT_ONLY = {"teacher_context_mode": "the teacher's context mode", "teacher_instruction": "the teacher's closing"}
CHOICES = {
    "distillation_mode": ("topk_logits", "full_logits", "sampled_token"),
    "loss_type": ("grpo", "bnpo", "dr_grpo", "dapo"),
    "importance_sampling_level": ("token", "sequence"),
    "scale_rewards": ("group", "batch", "none"),
    "rl_reward": ("correctness", "rlcr", "car"),
}
TEMPLATE_FIELDS = {
    "reprompt_template": ("prompt", "solution", "feedback"),
    "solution_template": ("successful_previous_attempt",),
    "feedback_template": ("feedback_raw",),
}


class _RankZeroParser(argparse.ArgumentParser):
    """argparse, speaking once for all processes of a launch: usage and help from rank 0 alone, and a bad flag's
    line said as a run's last line is (``caopd.last_line``)."""

    def _print_message(self, message: str, file=None) -> None:
        if rank() == 0:
            super()._print_message(message, file)

    def error(self, message: str):
        self.print_usage(sys.stderr)
        end_with(f"error: {message}")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _RankZeroParser(
        prog="accelerate launch main.py",
        description="Calibration-Aware On-Policy Distillation (CaOPD) on TRL's self-distillation trainer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--config", help="YAML file with any of these flags (keys = flag names); the command line wins")
    run.add_argument(
        "--backbone",
        choices=tuple(BACKBONES),
        default="sdft",
        help="the on-policy distillation CaOPD runs on: sdft (TRL's SDFTTrainer, teacher sees a golden "
        "demonstration) or sdpo (TRL's SDPOTrainer, teacher sees a successful rollout; verifier as reward)",
    )
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
    run.add_argument("--seed", type=non_negative_int, default=42)
    run.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' for the newest in output_dir")
    run.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over in an --output_dir that holds checkpoints of an earlier run (they are deleted)",
    )
    run.add_argument(
        "--no_wandb", action="store_true", help="do not report to Weights & Biases (same as --report_to none)"
    )
    run.add_argument(
        "--report_to",
        default=None,
        help="Trainer integrations: wandb, tensorboard, none, ... (default: wandb when it is installed, else none)",
    )
    run.add_argument("--save_rollouts", action="store_true", help="write every rollout and its targets as JSONL")
    run.add_argument(
        "--push_to_hub",
        action="store_true",
        help="push checkpoints as the Trainer does, and the final model with its card at the end",
    )
    run.add_argument("--hub_model_id", help="the Hub repository (user/name; default: the output folder's name)")
    run.add_argument("--hub_private_repo", action="store_true", help="create the Hub repository private")
    run.add_argument(
        "--confidence_reading",
        choices=CONFIDENCE_READINGS,
        default=DEFAULT_READING,
        help=READING_HELP + "; used by the logs and the RL rewards",
    )
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
    caopd.add_argument(
        "--teacher_context_mode",
        default=None,
        choices=TEACHER_MODES,
        help="sdft: the teacher's privileged context (default demo); sdpo's teacher always sees a successful rollout",
    )
    caopd.add_argument(
        "--teacher_instruction",
        default=None,
        help="sdft: closing instruction of the teacher context instead of the paper's wording for the mode "
        "(e.g. 'Now answer with a response of your own in the same format.')",
    )
    caopd.add_argument(
        "--num_generations", type=positive_int, default=8, help="K: rollouts per question (P_acc = correct / K)"
    )
    caopd.add_argument(
        "--num_prompts_per_batch",
        type=positive_int,
        default=32,
        help="distinct questions per optimizer step (the paper's question batch); each brings K rollouts",
    )
    caopd.add_argument("--ref_model_mixup_alpha", type=probability, default=0.01, help="EMA update rate of the teacher")
    caopd.add_argument("--teacher_model_kind", default="ema", choices=("ema", "base", "live"))

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--learning_rate", type=positive_float, default=2e-5)
    optim.add_argument("--num_train_epochs", type=positive_float, default=1)
    optim.add_argument("--max_steps", type=integer, default=-1, help="optimizer steps; overrides --num_train_epochs")
    optim.add_argument(
        "--per_device_train_batch_size", type=positive_int, default=8, help="rollouts per device per micro-step"
    )
    optim.add_argument("--warmup_steps", type=non_negative_int, default=10)
    optim.add_argument("--weight_decay", type=non_negative_float, default=0.01)
    optim.add_argument("--max_grad_norm", type=non_negative_float, default=1.0, help="0: no clipping")
    optim.add_argument("--lr_scheduler_type", default="linear", help="any of transformers' schedulers")
    optim.add_argument(
        "--lr_scheduler_kwargs",
        default=None,
        help="its extra arguments as JSON, e.g. '{\"min_lr_rate\": 0.1}' for cosine_with_min_lr",
    )
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument(
        "--attn_implementation",
        choices=("sdpa", "eager", "flash_attention_2"),
        default="sdpa",
        help="attention kernel; flash_attention_2 needs the flash-attn package and turns the shared prefix off",
    )
    optim.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on if the GPU has it"
    )
    optim.add_argument("--save_steps", type=positive_int, default=50)
    optim.add_argument(
        "--save_total_limit",
        type=positive_int,
        default=None,
        help="keep the newest N complete checkpoints (unset: all)",
    )
    optim.add_argument("--logging_steps", type=positive_int, default=1)

    distil = parser.add_argument_group("distillation")
    distil.add_argument(
        "--distillation_alpha", type=probability, default=1.0, help="0 forward KL, 1 reverse KL, else JSD"
    )
    distil.add_argument(
        "--distillation_topk", type=positive_int, default=100, help="top-k logits of the student's support"
    )
    distil.add_argument(
        "--num_loss_tokens_to_skip",
        type=non_negative_int,
        default=None,
        help="first completion tokens left out of the loss (default: sdft 3, the original release's; sdpo 0)",
    )
    distil.add_argument(
        "--no_shared_prefix",
        action="store_true",
        help="forward every rollout's prompt (TRL's way) instead of each distinct prompt once (same loss, slower)",
    )
    distil.add_argument("--temperature", type=positive_float, default=1.0, help="rollout sampling temperature")
    distil.add_argument("--max_prompt_length", type=positive_int, default=1024)
    distil.add_argument(
        "--overlong_prompts",
        choices=OVERLONG_CHOICES,
        default="error",
        help="prompts longer than --max_prompt_length: stop with a message (error), leave them out (drop), or "
        "cut their beginning as TRL does (truncate)",
    )
    distil.add_argument(
        "--max_completion_length", type=positive_int, default=1024, help="includes the appended confidence"
    )
    distil.add_argument(
        "--max_teacher_prompt_length", type=positive_int, default=None, help="default: prompt + completion + 128"
    )

    backbone = parser.add_argument_group(
        "backbone settings (TRL's names; unset = TRL's default for the backbone; refused by a backbone without them)"
    )
    for name, (kind, _, help_text) in BACKBONE_SETTINGS.items():
        if kind is bool:
            backbone.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            backbone.add_argument(
                f"--{name}", type=finite_float if kind is float else kind, default=None, help=help_text
            )

    peft = parser.add_argument_group("LoRA")
    peft.add_argument("--use_peft", action="store_true", help="train LoRA adapters; the EMA teacher is an adapter too")
    peft.add_argument("--lora_r", type=positive_int, default=16)
    peft.add_argument("--lora_alpha", type=positive_int, default=32)
    peft.add_argument("--lora_dropout", type=probability, default=0.05)

    held_out = parser.add_argument_group(
        "held-out evaluation", "calibration on questions the run never trains on, while it trains (caopd.held_out)"
    )
    held_out.add_argument(
        "--eval_strategy",
        choices=("no", "steps", "epoch"),
        default=None,
        help="the Trainer's evaluation schedule (default: steps when --eval_steps is given, else no)",
    )
    held_out.add_argument(
        "--eval_steps", type=positive_int, default=None, help="evaluate every N optimizer steps (and at the last)"
    )
    held_out.add_argument("--eval_data", help="held-out questions in the task's format (file or save_to_disk folder)")
    held_out.add_argument(
        "--eval_split_size",
        type=positive_float,
        default=None,
        help="hold out this many training rows (or this fraction, below 1); arithmetic: its validation questions "
        "(default 64)",
    )
    held_out.add_argument(
        "--num_generations_eval", type=positive_int, default=1, help="answers sampled per held-out question"
    )
    held_out.add_argument(
        "--per_device_eval_batch_size", type=positive_int, default=8, help="answers generated at once per process"
    )

    memory = parser.add_argument_group("loss memory")
    memory.add_argument(
        "--chunked_loss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compute the loss over chunks of completion positions, never the whole logits (exact; SDFT backbone)",
    )
    memory.add_argument("--loss_chunk_size", type=positive_int, default=1024, help="completion positions per chunk")

    vllm = parser.add_argument_group("generation backend")
    vllm.add_argument(
        "--use_vllm", action=argparse.BooleanOptionalAction, default=None, help="default: on if vLLM and a GPU exist"
    )
    vllm.add_argument("--vllm_mode", default="colocate", choices=("colocate", "server"))
    vllm.add_argument("--vllm_server_host", default="0.0.0.0")
    vllm.add_argument("--vllm_server_port", type=port, default=8000)
    vllm.add_argument(
        "--vllm_server_timeout",
        type=positive_float,
        default=240.0,
        help="seconds to wait for the vLLM server (--vllm_mode server) to answer before stopping with a message",
    )
    vllm.add_argument("--vllm_gpu_memory_utilization", type=probability, default=0.3)
    vllm.add_argument(
        "--print_vllm_max_model_len",
        action="store_true",
        help="print the vLLM context length these settings need (longest prompt sent + completion) and exit; "
        "scripts/run_vllm_server.sh sizes its server with it",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags from the command line over flags from ``--config``; every bad value raises CLIError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**_read_config(args.config, parser))
        args = parser.parse_args(argv)
    _validate(args)
    return args


# YAML aliases a config may use: a flag file needs few, and a nest of aliases expands to gigabytes when printed.
MAX_YAML_ALIASES = 32


def _read_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_YAML_ALIASES:
            raise CLIError(
                f"--config {path}: {aliases} YAML aliases (*name), more than a flag file needs ({MAX_YAML_ALIASES}); "
                "write the values out"
            )
        values = yaml.safe_load(text) or {}
    except OSError as err:
        raise CLIError(f"--config {path}: cannot read it ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise CLIError(f"--config {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise CLIError(f"--config {path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(values, dict):
        raise CLIError(f"--config {path}: expected a mapping of flag names to values")
    odd = [key for key in values if not isinstance(key, str)]
    if odd:
        raise CLIError(f"--config {path}: key {odd[0]!r} is not a flag name; keys are flag names without '--'")
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(actions) - {"help"})
    if unknown:
        raise CLIError(f"--config {path}: unknown key(s) {', '.join(unknown)}; keys are flag names without '--'")
    return {key: _config_value(path, key, value, actions[key]) for key, value in values.items()}


def _config_value(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """One YAML value, typed as its flag expects: booleans strictly (true/false, or the strings "true"/"false"),
    numbers through the flag's own check, text as text (``report_to`` also as a list); anything else refused."""
    where = f"--config {path}: {key}"
    if value is None:
        return None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # a switch
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise CLIError(f"{where} must be true or false, got {value!r}")
        return value
    if key == "report_to" and isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = ",".join(value)
    if action.type is None:
        if not isinstance(value, str):
            raise CLIError(f"{where} must be text, got {value!r} ({type(value).__name__}); quote it in the YAML")
    elif isinstance(value, (list, dict)):
        raise CLIError(f"{where} must be a single value, got {value!r}")
    else:
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise CLIError(f"{where}={value!r} is not valid: {err}") from err
    if action.choices is not None and value not in action.choices:
        raise CLIError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def backbone_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The backbone settings the user gave (TRL's defaults stand for the others)."""
    return {name: getattr(args, name) for name in BACKBONE_SETTINGS if getattr(args, name) is not None}


def _validate_backbone(args: argparse.Namespace) -> None:
    """Settings the chosen backbone does not have are refused by name; given values are checked one by one."""
    for name, (_, backbones, help_text) in BACKBONE_SETTINGS.items():
        if getattr(args, name) is not None and args.backbone not in backbones:
            raise CLIError(
                f"--{name} is a setting of --backbone {' / '.join(backbones)} ({help_text}); "
                f"--backbone {args.backbone} has no such setting: drop it"
            )
    for name, meaning in SDFT_ONLY.items():
        if getattr(args, name) is not None and args.backbone != "sdft":
            teacher = {
                "sdpo": "the sdpo teacher sees a successful rollout of the question (--reprompt_template, "
                "--solution_template)",
                "grpo": "--backbone grpo has no teacher",
            }[args.backbone]
            raise CLIError(f"--{name} sets {meaning} of the sdft backbone; {teacher}: drop it")
    if args.backbone == "grpo":
        changed = [name for name, default in DISTILLATION_ONLY.items() if getattr(args, name) != default]
        if changed:
            raise CLIError(
                f"--{changed[0]} is a setting of the distillation backbones (sdft, sdpo); --backbone grpo trains "
                "without a teacher or CaOPD targets: drop it"
            )
    margin = args.car_margin
    if margin is not None and not 0.0 <= margin < 1.0:
        raise CLIError(f"--car_margin must lie in [0, 1), got {margin}")
    for name, choices in CHOICES.items():
        value = getattr(args, name)
        if value is not None and value not in choices:
            raise CLIError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")
    for name, fields in TEMPLATE_FIELDS.items():
        template = getattr(args, name)
        if template is not None:
            try:
                template.format(**{field: "" for field in fields})
            except (KeyError, IndexError, ValueError) as err:
                raise CLIError(
                    f"--{name} {template!r} does not format with {{{'}, {'.join(fields)}}} only ({err}); "
                    "write other braces doubled ({{ }})"
                ) from err
    if args.backbone == "sdpo" and not args.no_empirical_calibration and args.reprompt_template is not None:
        try:
            closing_instruction(args.reprompt_template)
        except ValueError as err:
            raise CLIError(f"--reprompt_template: {err}") from err
    weight = args.distillation_weight
    if weight is not None and not 0.0 <= weight <= 1.0:
        raise CLIError(f"--distillation_weight must lie in [0, 1] (1 = distillation only), got {weight}")
    for name in ("distillation_is_clip", "epsilon", "epsilon_high"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise CLIError(f"--{name} must be positive, got {value}")
    threshold = args.success_reward_threshold
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise CLIError(
            f"--success_reward_threshold must lie in (0, 1], got {threshold}: the verifier's reward is 0 or 1, so "
            "at or below 0 every rollout counts as a success (P_acc 1) and above 1 none does"
        )


def setting_warnings(args: argparse.Namespace, uses_vllm: bool) -> list[str]:
    """Legal settings that do not do what they look like they do: one warning line each (rank 0 prints them)."""
    warnings = []
    reward = args.rl_reward or "correctness"
    if args.car_margin is not None and reward != "car":
        warnings.append(f"--car_margin is read by --rl_reward car only; with --rl_reward {reward} it is unused")
    if args.vllm_mode != "colocate" and not uses_vllm:
        warnings.append(
            f"--vllm_mode {args.vllm_mode} is unused: rollouts use transformers (vLLM is off: not installed, no "
            "GPU, or --no-use_vllm)"
        )
    if args.distillation_weight == 0.0 and args.backbone == "sdpo" and not args.no_empirical_calibration:
        warnings.append(
            "--distillation_weight 0 trains the policy-gradient term alone, which never sees the CaOPD targets (the "
            "rewritten confidence was not sampled): this run cannot calibrate; add --no_empirical_calibration or "
            "raise the weight"
        )
    if args.num_generations == 1 and args.backbone != "grpo" and not args.no_empirical_calibration:
        warnings.append(
            "--num_generations 1: P_acc from one rollout is 0 or 1, so CaOPD teaches confidence 0.00 or 1.00 only; "
            "the paper samples 8"
        )
    return warnings


def _validate(args: argparse.Namespace) -> None:
    _validate_backbone(args)
    if not args.output_dir:
        raise CLIError("--output_dir is required (on the command line or in --config)")
    problem = output_folder_problem(args.output_dir, "--output_dir")
    if problem:
        raise CLIError(problem)
    if not 0.0 < args.vllm_gpu_memory_utilization <= 1.0:
        raise CLIError(f"--vllm_gpu_memory_utilization must lie in (0, 1], got {args.vllm_gpu_memory_utilization}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise CLIError(f"--max_steps must be positive (or -1 to train --num_train_epochs), got {args.max_steps}")
    if args.lora_dropout >= 1.0:
        raise CLIError(f"--lora_dropout must be below 1 (1 drops every activation), got {args.lora_dropout}")
    _validate_scheduler(args)
    _validate_held_out(args)


def _validate_held_out(args: argparse.Namespace) -> None:
    """The evaluation schedule and its questions: a schedule needs questions (arithmetic has its own), and
    questions need a schedule."""
    if args.eval_strategy is None:
        args.eval_strategy = "steps" if args.eval_steps is not None else "no"
    if args.eval_data is not None and args.eval_split_size is not None:
        raise CLIError("--eval_data and --eval_split_size both name the held-out questions; give one of them")
    if args.eval_strategy == "no":
        given = [flag for flag in ("eval_steps", "eval_data", "eval_split_size") if getattr(args, flag) is not None]
        if given:
            raise CLIError(f"--{given[0]} is set but --eval_strategy is no: add --eval_steps N to evaluate")
        return
    if args.eval_data is None and args.eval_split_size is None and args.dataset_name != "arithmetic":
        raise CLIError(
            f"--eval_strategy {args.eval_strategy}: no held-out questions; give --eval_data FILE or "
            "--eval_split_size N (rows held out of the training set)"
        )
    if args.per_device_eval_batch_size % args.num_generations_eval:
        raise CLIError(
            f"--per_device_eval_batch_size {args.per_device_eval_batch_size} is not a multiple of "
            f"--num_generations_eval {args.num_generations_eval}; each question's answers are generated together"
        )


def _validate_scheduler(args: argparse.Namespace) -> None:
    """The scheduler and its arguments, built once on a stand-in optimizer: transformers' own check, now."""
    import torch
    from transformers import get_scheduler

    try:
        kwargs = json.loads(args.lr_scheduler_kwargs) if args.lr_scheduler_kwargs else {}
    except json.JSONDecodeError as err:
        raise CLIError(f"--lr_scheduler_kwargs is not JSON ({err}); e.g. '{{\"min_lr_rate\": 0.1}}'") from err
    if not isinstance(kwargs, dict):
        raise CLIError(f"--lr_scheduler_kwargs must be a JSON object, got {args.lr_scheduler_kwargs}")
    if args.lr_scheduler_type == "reduce_lr_on_plateau":
        raise CLIError("--lr_scheduler_type reduce_lr_on_plateau follows an evaluation metric, and a run has none")
    args.lr_scheduler_kwargs = kwargs
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        get_scheduler(args.lr_scheduler_type, optimizer, 1, 10, scheduler_specific_kwargs=kwargs)
    except (ValueError, TypeError, KeyError) as err:
        raise CLIError(
            f"--lr_scheduler_type {args.lr_scheduler_type} with --lr_scheduler_kwargs {json.dumps(kwargs)}: {err}"
        ) from err


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

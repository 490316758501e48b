"""The command line: TRL's parser (``TrlParser``) over the run's own arguments, the backbone's config and TRL's
``ModelConfig``, so every field of the Trainer and of the backbone's TRL config is a flag under TRL's name.

``--config`` reads a YAML file as TRL's scripts do (keys are flag names, an ``env:`` mapping sets environment
variables, the command line wins), strictly typed. The original release's flags keep their names and defaults (its
spellings where TRL's differ are aliases). Every bad value ends in one ``error:`` line (exit 2), from argparse or from
the one validation pass, ``_validate``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trl import ModelConfig, TrlParser

from caopd.atomic import output_folder_problem
from caopd.checks import (
    CLIError,
    finite_float,
    integer,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    probability,
)
from caopd.confidence import CONFIDENCE_READINGS
from caopd.last_line import end_with, rank
from caopd.prompt_lengths import OVERLONG_CHOICES
from caopd.targets import TEACHER_MODES, closing_instruction
from caopd.tasks import TASK_NAMES
from caopd.verifiers import TOOLUSE_MATCHES
from distil_config import TEACHER_KINDS, DistilConfig, RLConfig, SDPODistilConfig

BACKBONES = {
    "sdft": "TRL's SDFTTrainer",
    "sdpo": "TRL's SDPOTrainer",
    "grpo": "TRL's GRPOTrainer (the RL baselines)",
}
BACKBONE_CONFIGS = {"sdft": DistilConfig, "sdpo": SDPODistilConfig, "grpo": RLConfig}


@dataclass
class RunArguments:
    """What a run needs beyond TRL's configs: the backbone, the task and its data, the question batch, the held-out
    questions and this CLI's own switches."""

    backbone: str = field(
        default="sdft",
        metadata={
            "choices": tuple(BACKBONES),
            "help": "the on-policy distillation CaOPD runs on: sdft (TRL's SDFTTrainer, the teacher sees a golden "
            "demonstration), sdpo (TRL's SDPOTrainer, the teacher sees a successful rollout) or grpo (the RL "
            "baselines, --rl_reward); --help lists the settings of the backbone given with it",
        },
    )
    dataset_name: str = field(
        default="tooluse",
        metadata={
            "choices": TASK_NAMES,
            "help": "the task (data format and verifier), not a Hub dataset: your own rows go in with "
            "--dataset_name custom --train_data FILE",
        },
    )
    verifier: str | None = field(
        default=None,
        metadata={
            "help": "with --dataset_name custom: exact_match, numeric, mcq_letter, regex:PATTERN, tooluse or "
            "module:function"
        },
    )
    train_data: str | None = field(
        default=None, metadata={"help": "training set (save_to_disk folder, .json or .jsonl); default per task"}
    )
    tooluse_match: str = field(
        default="sequence",
        metadata={
            "choices": TOOLUSE_MATCHES,
            "help": "tool-use rule for P_acc (and evaluation): every call in order (sequence), the first call "
            "(first_call: the original's P_acc and calibration script), or tool names + merged inputs (merged: its "
            "accuracy script)",
        },
    )
    num_prompts_per_batch: int = field(
        default=32,
        metadata={"help": "distinct questions per optimizer step (the paper's question batch); each brings K rollouts"},
    )
    overlong_prompts: str = field(
        default="error",
        metadata={
            "choices": OVERLONG_CHOICES,
            "help": "prompts longer than --max_prompt_length: stop with a message (error), leave them out (drop), "
            "or cut their beginning as TRL does (truncate)",
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "held-out questions in the task's format (file or save_to_disk folder)"},
    )
    eval_split_size: float | None = field(
        default=None,
        metadata={
            "help": "hold out this many training rows (or this fraction, below 1); arithmetic: its validation "
            "questions (default 64)"
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "start over in an --output_dir that holds checkpoints of an earlier run (they are deleted)"},
    )
    no_wandb: bool = field(
        default=False, metadata={"help": "do not report to Weights & Biases (same as --report_to none)"}
    )
    print_vllm_max_model_len: bool = field(
        default=False,
        metadata={
            "help": "print the vLLM context length these settings need (longest prompt sent + completion) and "
            "exit; scripts/run_vllm_server.sh sizes its server with it"
        },
    )


@dataclass
class CaOPDModelConfig(ModelConfig):
    """TRL's model settings, with the original release's model and attention defaults and its ``--model_name``."""

    model_name_or_path: str = field(
        default="Qwen/Qwen3-8B",
        metadata={"aliases": ["--model_name"], "help": "hub id, local directory, or 'smollm2' (embedded)"},
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "choices": ("sdpa", "eager", "flash_attention_2"),
            "help": "attention kernel; flash_attention_2 needs the flash-attn package and turns the shared prefix off",
        },
    )


# The original release's defaults where the Trainer's or TRL's differ, and this CLI's automatic choices (None: on a
# GPU bf16, vLLM where installed, wandb where installed, evaluation when --eval_steps is given).
CLI_DEFAULTS: dict[str, Any] = {
    "output_dir": None,
    "learning_rate": 2e-5,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "warmup_steps": 10,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "lr_scheduler_type": "linear",
    "gradient_checkpointing": False,
    "save_strategy": "steps",
    "save_steps": 50,
    "logging_steps": 1,
    "seed": 42,
    "report_to": None,
    "bf16": None,
    "use_vllm": None,
    "eval_strategy": None,
    "per_device_eval_batch_size": 8,
    "num_generations": 8,
    "num_generations_eval": 1,
    "max_prompt_length": 1024,
    "max_completion_length": 1024,
    "temperature": 1.0,
    "distillation_alpha": 1.0,
    "distillation_topk": 100,
    "teacher_update_rate": 0.01,
    "teacher_model_kind": "ema",
    "vllm_mode": "colocate",
    "vllm_server_host": "0.0.0.0",
    "vllm_server_port": 8000,
    "vllm_server_timeout": 240.0,
    "vllm_gpu_memory_utilization": 0.3,
}
# Number flags with a range: a bad value is argparse's line naming the flag (the config's own check comes later).
CHECKED_TYPES = {
    "seed": non_negative_int,
    "learning_rate": positive_float,
    "num_train_epochs": positive_float,
    "max_steps": integer,
    "per_device_train_batch_size": positive_int,
    "warmup_steps": non_negative_float,
    "weight_decay": non_negative_float,
    "max_grad_norm": non_negative_float,
    "save_steps": positive_float,
    "save_total_limit": positive_int,
    "logging_steps": positive_float,
    "eval_steps": positive_float,
    "per_device_eval_batch_size": positive_int,
    "num_generations": positive_int,
    "num_generations_eval": positive_int,
    "num_prompts_per_batch": positive_int,
    "eval_split_size": positive_float,
    "teacher_update_rate": probability,
    "distillation_alpha": probability,
    "distillation_topk": positive_int,
    "num_loss_tokens_to_skip": non_negative_int,
    "temperature": positive_float,
    "max_prompt_length": positive_int,
    "max_completion_length": positive_int,
    "max_teacher_prompt_length": positive_int,
    "loss_chunk_size": positive_int,
    "lora_r": positive_int,
    "lora_alpha": positive_int,
    "lora_dropout": probability,
    "vllm_server_port": port,
    "vllm_server_timeout": positive_float,
    "vllm_gpu_memory_utilization": probability,
    "distillation_is_clip": finite_float,
    "distillation_weight": finite_float,
    "success_reward_threshold": finite_float,
    "epsilon": finite_float,
    "epsilon_high": finite_float,
    "car_margin": finite_float,
}
ARGPARSE_CHOICES = {
    "teacher_context_mode": TEACHER_MODES,
    "teacher_model_kind": TEACHER_KINDS,
    "confidence_reading": CONFIDENCE_READINGS,
    "vllm_mode": ("colocate", "server"),
}
# TRL's free-text settings with a fixed set of values, checked in the validation pass.
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
# Fields this CLI sets itself: given by hand they would be overridden, so they are refused with the reason.
DERIVED = {
    "gradient_accumulation_steps": "it follows from --num_prompts_per_batch x --num_generations over "
    "--per_device_train_batch_size x the processes",
    "use_cpu": "a run trains on the GPU where there is one",
}
# TRL's ModelConfig settings this CLI does not apply (it loads the model itself): refused rather than ignored.
UNAPPLIED_MODEL_SETTINGS = (
    "model_revision",
    "dtype",
    "trust_remote_code",
    "lora_target_parameters",
    "lora_task_type",
    "load_in_8bit",
    "load_in_4bit",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
    "bnb_4bit_quant_storage",
)


@dataclass
class _Switch:
    on: bool = False


# How the parser reads a boolean field's value ("true", "no", ...): its switches are the actions of this type.
SWITCH_TYPE = TrlParser(_Switch)._option_string_actions["--on"].type


class CaOPDParser(TrlParser):
    """TRL's parser, speaking once for all processes of a launch: usage and help from rank 0 alone, and a bad flag's
    line said as a run's last line is (``caopd.last_line``)."""

    def _print_message(self, message: str, file=None) -> None:
        if rank() == 0:
            super()._print_message(message, file)

    def error(self, message: str):
        self.print_usage(sys.stderr)
        end_with(f"error: {message}")
        sys.exit(2)


def build_parser(backbone: str = "sdft") -> CaOPDParser:
    """The flags of a run on ``backbone``: the run's, the backbone config's (the Trainer's among them) and the
    model's, under their field names only (the hyphenated twins the parser adds are dropped), each switch also
    as ``--no_NAME``, with the original release's defaults, ranges and spellings."""
    parser = CaOPDParser(
        (RunArguments, BACKBONE_CONFIGS[backbone], CaOPDModelConfig),
        prog="accelerate launch main.py",
        description="Calibration-Aware On-Policy Distillation (CaOPD) on TRL's trainers. These are the flags of "
        f"--backbone {backbone}; --backbone NAME --help lists another's.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        help="YAML file with any of these flags (keys: flag names; an env: mapping sets environment variables); "
        "the command line wins",
    )
    for action in list(parser._actions):
        _tidy(parser, action)
    if backbone != "grpo":  # GRPO's own --ref_model_mixup_alpha is TRL's reference-model setting
        parser.add_argument(
            "--ref_model_mixup_alpha",
            dest="teacher_update_rate",
            type=probability,
            default=argparse.SUPPRESS,
            help="the original release's name of --teacher_update_rate (the EMA teacher's update rate)",
        )
    dests = {action.dest for action in parser._actions}
    parser.set_defaults(**{name: value for name, value in CLI_DEFAULTS.items() if name in dests})
    return parser


def _tidy(parser: CaOPDParser, action: argparse.Action) -> None:
    for option in [option for option in action.option_strings if "-" in option[2:]]:
        action.option_strings.remove(option)
        del parser._option_string_actions[option]
    if action.dest in CHECKED_TYPES:
        action.type = CHECKED_TYPES[action.dest]
    if action.dest in ARGPARSE_CHOICES:
        action.choices = ARGPARSE_CHOICES[action.dest]
    if action.type is SWITCH_TYPE:
        action.nargs, action.const = "?", True  # a bare switch is on, as for the Trainer's own switches
        negatives = [f"--no_{action.dest}", f"--no-{action.dest}"]  # the second: the original release's spelling
        negatives = [flag for flag in negatives if flag not in parser._option_string_actions]
        if negatives and not action.dest.startswith("no_"):
            parser.add_argument(
                *negatives, dest=action.dest, action="store_false", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags from the command line over flags from ``--config``; every bad value raises CLIError or exits with
    argparse's line. ``given_settings`` names what the command line or the config set."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen, _ = _pre_parser().parse_known_args(argv)
    values = _read_config(chosen.config) if chosen.config else {}
    environment = values.pop("env", None)
    backbone = chosen.backbone or values.get("backbone") or "sdft"
    parser = build_parser(backbone if backbone in BACKBONE_CONFIGS else "sdft")
    configured = _typed_config(chosen.config, values, parser, backbone) if values else {}
    _set_environment(chosen.config, environment)
    parser.set_defaults_with_config(**configured)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, unknown, args.backbone)
    args.given_settings = sorted(set(configured) | _given_on_command_line(parser, argv))
    _validate(args)
    return args


def _pre_parser() -> argparse.ArgumentParser:
    """``--config`` and ``--backbone`` alone: they decide which flags the parser has."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--backbone")
    return parser


def _given_on_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    flags = (token.split("=", 1)[0] for token in argv if token.startswith("--"))
    return {parser._option_string_actions[flag].dest for flag in flags if flag in parser._option_string_actions}


def _owners(flag: str, backbone: str) -> list[str]:
    """The other backbones that have ``flag``."""
    return [name for name in BACKBONE_CONFIGS if name != backbone and flag in build_parser(name)._option_string_actions]


def _refuse_unknown(parser: CaOPDParser, unknown: list[str], backbone: str) -> None:
    flag = next((token.split("=", 1)[0] for token in unknown if token.startswith("--")), None)
    owners = _owners(flag, backbone) if flag else []
    if owners:
        raise CLIError(
            f"{flag} is a setting of --backbone {' / '.join(owners)}; --backbone {backbone} has no such setting: "
            "drop it"
        )
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")


# YAML aliases a config may use: a flag file needs few, and a nest of aliases expands to gigabytes when printed.
MAX_YAML_ALIASES = 32


def _read_config(path: str) -> dict[str, Any]:
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
    if "backbone" in values and values["backbone"] not in BACKBONE_CONFIGS:
        raise CLIError(
            f"--config {path}: backbone must be one of {', '.join(BACKBONE_CONFIGS)}, got {values['backbone']!r}"
        )
    return values


def _set_environment(path: str | None, environment: Any) -> None:
    """The config's ``env:`` mapping, as TRL's scripts set it: variable names to plain values."""
    if environment is None:
        return
    if not isinstance(environment, dict) or not all(
        isinstance(name, str) and isinstance(value, (str, int, float, bool)) for name, value in environment.items()
    ):
        raise CLIError(f"--config {path}: env must map variable names to plain values (text or numbers)")
    for name, value in environment.items():
        os.environ[name] = str(value).lower() if isinstance(value, bool) else str(value)


def _typed_config(path: str, values: dict[str, Any], parser: CaOPDParser, backbone: str) -> dict[str, Any]:
    """The config's values under their destinations, each typed and checked as its flag is."""
    actions = {flag[2:]: action for flag, action in parser._option_string_actions.items() if flag != "--config"}
    unknown = sorted(key for key in values if key not in actions or key == "help")
    if unknown:
        owners = _owners(f"--{unknown[0]}", backbone)
        if owners:
            raise CLIError(
                f"--config {path}: {unknown[0]} is a setting of --backbone {' / '.join(owners)}; --backbone "
                f"{backbone} has no such setting: drop it"
            )
        raise CLIError(f"--config {path}: unknown key(s) {', '.join(unknown)}; keys are flag names without '--'")
    typed = {}
    for key, value in values.items():
        action = actions[key]
        value = _config_value(path, key, value, action)
        typed[action.dest] = (not value) if isinstance(action, argparse._StoreFalseAction) else value
    return typed


def _config_value(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """One YAML value, typed as its flag expects: booleans strictly (true/false, or the strings "true"/"false"),
    numbers through the flag's own check, text as text (``report_to`` also as a list); anything else refused."""
    where = f"--config {path}: {key}"
    if value is None:
        return None
    if action.nargs == 0 or action.type is SWITCH_TYPE:  # a switch
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise CLIError(f"{where} must be true or false, got {value!r}")
        return value
    if key == "report_to" and isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = ",".join(value)
    if action.nargs == "+":
        return [_one_value(where, item, action) for item in (value if isinstance(value, list) else [value])]
    return _one_value(where, value, action)


def _one_value(where: str, value: Any, action: argparse.Action) -> Any:
    if action.type in (None, str):
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


def setting_warnings(args: argparse.Namespace, uses_vllm: bool) -> list[str]:
    """Legal settings that do not do what they look like they do: one warning line each (rank 0 prints them)."""
    warnings = []
    reward = getattr(args, "rl_reward", "correctness")
    if "car_margin" in args.given_settings and reward != "car":
        warnings.append(f"--car_margin is read by --rl_reward car only; with --rl_reward {reward} it is unused")
    if args.backbone == "grpo" and "ref_model_mixup_alpha" in args.given_settings and not args.sync_ref_model:
        warnings.append(
            "--ref_model_mixup_alpha under --backbone grpo is TRL's reference-model mixup, read only with "
            "--sync_ref_model (GRPO has no EMA teacher); as given it is unused"
        )
    if args.vllm_mode != "colocate" and not uses_vllm:
        warnings.append(
            f"--vllm_mode {args.vllm_mode} is unused: rollouts use transformers (vLLM is off: not installed, no "
            "GPU, or --use_vllm false)"
        )
    calibrates = args.backbone != "grpo" and args.empirical_calibration
    if args.backbone == "sdpo" and args.distillation_weight == 0.0 and calibrates:
        warnings.append(
            "--distillation_weight 0 trains the policy-gradient term alone, which never sees the CaOPD targets (the "
            "rewritten confidence was not sampled): this run cannot calibrate; add --no_empirical_calibration or "
            "raise the weight"
        )
    if args.num_generations == 1 and calibrates:
        warnings.append(
            "--num_generations 1: P_acc from one rollout is 0 or 1, so CaOPD teaches confidence 0.00 or 1.00 only; "
            "the paper samples 8"
        )
    return warnings


def _validate(args: argparse.Namespace) -> None:
    """The checks a flag's type cannot make: combinations, ranges of TRL's free settings, files and folders."""
    for name in args.given_settings:
        if name in DERIVED:
            raise CLIError(f"--{name} is set by this CLI: {DERIVED[name]}; drop it")
        if name in UNAPPLIED_MODEL_SETTINGS:
            raise CLIError(f"--{name} is a setting of TRL's ModelConfig that this CLI does not apply; drop it")
    _validate_backbone_settings(args)
    if not args.output_dir:
        raise CLIError("--output_dir is required (on the command line or in --config)")
    problem = output_folder_problem(args.output_dir, "--output_dir")
    if problem:
        raise CLIError(problem)
    if args.vllm_gpu_memory_utilization == 0:
        raise CLIError("--vllm_gpu_memory_utilization must lie in (0, 1], got 0")
    if args.max_steps == 0 or args.max_steps < -1:
        raise CLIError(f"--max_steps must be positive (or -1 to train --num_train_epochs), got {args.max_steps}")
    if args.lora_dropout >= 1.0:
        raise CLIError(f"--lora_dropout must be below 1 (1 drops every activation), got {args.lora_dropout}")
    _validate_scheduler(args)
    _validate_held_out(args)


def _validate_backbone_settings(args: argparse.Namespace) -> None:
    """TRL's settings of the backbone, checked where TRL would fail late or not at all."""
    margin = getattr(args, "car_margin", None)
    if margin is not None and not 0.0 <= margin < 1.0:
        raise CLIError(f"--car_margin must lie in [0, 1), got {margin}")
    for name, choices in CHOICES.items():
        value = getattr(args, name, None)
        if value is not None and value not in choices:
            raise CLIError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")
    for name, fields in TEMPLATE_FIELDS.items():
        template = getattr(args, name, None)
        if template is not None:
            try:
                template.format(**{field: "" for field in fields})
            except (KeyError, IndexError, ValueError) as err:
                raise CLIError(
                    f"--{name} {template!r} does not format with {{{'}, {'.join(fields)}}} only ({err}); "
                    "write other braces doubled ({{ }})"
                ) from err
    if args.backbone == "sdpo" and args.empirical_calibration and "reprompt_template" in args.given_settings:
        try:
            closing_instruction(args.reprompt_template)
        except ValueError as err:
            raise CLIError(f"--reprompt_template: {err}") from err
    weight = getattr(args, "distillation_weight", None)
    if weight is not None and not 0.0 <= weight <= 1.0:
        raise CLIError(f"--distillation_weight must lie in [0, 1] (1 = distillation only), got {weight}")
    for name in ("distillation_is_clip", "epsilon", "epsilon_high"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise CLIError(f"--{name} must be positive, got {value}")
    threshold = getattr(args, "success_reward_threshold", None)
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise CLIError(
            f"--success_reward_threshold must lie in (0, 1], got {threshold}: the verifier's reward is 0 or 1, so "
            "at or below 0 every rollout counts as a success (P_acc 1) and above 1 none does"
        )


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

"""The command line: TRL's parser (``TrlParser``) over the run's own arguments (``caopd.run_arguments``), the
backbone's config and TRL's ``ModelConfig``, so every field of the Trainer and of the backbone's TRL config is a flag
under its own name. The original release's flags keep their names and defaults; where TRL's name differs, the old
spelling is an alias. ``--config`` YAML is read by ``caopd.config_file``; every bad value ends in one ``error:``
line (exit 2), from argparse or from the one validation pass (``caopd.flag_validation``).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from typing import Any

from trl import TrlParser

from caopd.checks import (
    CLIError,
    decay_rate,
    finite_float,
    integer,
    json_object,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    probability,
    share,
)
from caopd.confidence import CONFIDENCE_READINGS
from caopd.config_file import read_config, set_environment, typed_config
from caopd.flag_validation import validate
from caopd.last_line import end_with, rank
from caopd.run_arguments import SWITCH_TYPE, CaOPDModelConfig, RunArguments
from caopd.targets import TEACHER_MODES
from distil_config import TEACHER_KINDS, DistilConfig, RLConfig, SDPODistilConfig

BACKBONE_CONFIGS = {"sdft": DistilConfig, "sdpo": SDPODistilConfig, "grpo": RLConfig}


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
    "vllm_gpu_memory_utilization": share,
    "distillation_is_clip": finite_float,
    "distillation_weight": finite_float,
    "success_reward_threshold": finite_float,
    "epsilon": finite_float,
    "epsilon_high": finite_float,
    "car_margin": finite_float,
    # TRL's and the Trainer's own settings that would otherwise fail mid-run with a traceback or train nothing
    "num_iterations": positive_int,
    "steps_per_generation": positive_int,
    "generation_batch_size": positive_int,
    "teacher_sync_steps": positive_int,
    "ref_model_sync_steps": positive_int,
    "ref_model_mixup_alpha": probability,
    "top_p": share,
    "top_k": non_negative_int,
    "min_p": probability,
    "repetition_penalty": positive_float,
    "beta": non_negative_float,
    "adam_beta1": decay_rate,
    "adam_beta2": decay_rate,
    "adam_epsilon": non_negative_float,
    "data_seed": non_negative_int,
    "dataloader_num_workers": non_negative_int,
    "eval_delay": non_negative_float,
    "vllm_tensor_parallel_size": positive_int,
    "vllm_max_model_length": positive_int,
    "vllm_group_port": port,
}
ARGPARSE_CHOICES = {
    "teacher_context_mode": TEACHER_MODES,
    "teacher_model_kind": TEACHER_KINDS,
    "confidence_reading": CONFIDENCE_READINGS,
    "vllm_mode": ("colocate", "server"),
}


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
    mappings = mapping_fields(BACKBONE_CONFIGS[backbone])
    for action in list(parser._actions):
        _tidy(parser, action, mappings)
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


def mapping_fields(config_class: type) -> set[str]:
    """The config's settings typed as a mapping only (``dict | None``, e.g. SDFT's ``generation_kwargs``). TRL's
    parser would call ``dict(text)`` on their value, which no text passes; here they take JSON."""

    def members(hint) -> set:
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        return {typing.get_origin(member) or member for member in (typing.get_args(hint) if union else (hint,))}

    hints = typing.get_type_hints(config_class)
    return {name for name, hint in hints.items() if dict in members(hint) and str not in members(hint)}


def _tidy(parser: CaOPDParser, action: argparse.Action, mappings: set[str]) -> None:
    for option in [option for option in action.option_strings if "-" in option[2:]]:
        action.option_strings.remove(option)
        del parser._option_string_actions[option]
    if action.dest in CHECKED_TYPES:
        check = CHECKED_TYPES[action.dest]
        action.type = check if action.default is not None else _or_none(check)
    if action.dest in mappings:
        action.type = json_object
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


def _or_none(check):
    """``check`` for a setting whose default is None: ``none`` or ``null`` sets it back, as TRL's parser allows."""

    def convert(value):
        return None if isinstance(value, str) and value.strip().lower() in ("none", "null") else check(value)

    convert.__name__ = check.__name__  # argparse names the type in its messages
    return convert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags from the command line over flags from ``--config``; every bad value raises CLIError or exits with
    argparse's line. ``given_settings`` names what the command line or the config set."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        chosen, _ = _pre_parser().parse_known_args(argv)
    except argparse.ArgumentError:  # e.g. --config without a path: the full parser says so, with its usage
        chosen = argparse.Namespace(config=None, backbone=None)
    values = read_config(chosen.config) if chosen.config else {}
    environment = values.pop("env", None)
    backbone = chosen.backbone or values.get("backbone") or "sdft"
    config_class = BACKBONE_CONFIGS.get(backbone, DistilConfig)  # an unknown --backbone: the parser refuses it
    parser = build_parser(backbone if backbone in BACKBONE_CONFIGS else "sdft")
    dict_fields = set(config_class._VALID_DICT_FIELDS) | mapping_fields(config_class)
    configured = typed_config(chosen.config, values, parser, backbone, _owners, dict_fields) if values else {}
    set_environment(chosen.config, environment)
    parser.set_defaults_with_config(**configured)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, unknown, args.backbone)
    args.given_settings = sorted(set(configured) | _given_on_command_line(parser, argv))
    validate(args)
    return args


def _pre_parser() -> argparse.ArgumentParser:
    """``--config`` and ``--backbone`` alone: they decide which flags the parser has."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
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

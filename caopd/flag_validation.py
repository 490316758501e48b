"""The one validation pass over parsed flags: what a flag's type cannot check (combinations, ranges of TRL's free
settings, files and folders, the scheduler), the warnings for legal settings that do nothing, and the gradient
accumulation the question batch fixes. Each problem is one ``CLIError`` line."""

from __future__ import annotations

import argparse
import dataclasses
import json

from transformers.utils import is_liger_kernel_available
from trl import ModelConfig

from caopd.atomic import output_folder_problem
from caopd.checks import CLIError
from caopd.rewards import RL_REWARDS
from caopd.targets import closing_instruction

# TRL's free-text settings with a fixed set of values, checked in the validation pass.
CHOICES = {
    "distillation_mode": ("topk_logits", "full_logits", "sampled_token"),
    "loss_type": ("grpo", "bnpo", "dr_grpo", "dapo"),
    "importance_sampling_level": ("token", "sequence"),
    "scale_rewards": ("group", "batch", "none"),
    "rl_reward": RL_REWARDS,
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
    "model_init_kwargs": "the model is loaded by this CLI (--bf16, --attn_implementation) and its teacher like it",
}
# TRL's ModelConfig settings this CLI applies (it loads the model itself); any other given is refused, not ignored.
APPLIED_MODEL_SETTINGS = (
    "model_name_or_path",
    "attn_implementation",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_modules_to_save",
    "use_rslora",
    "use_dora",
)
UNAPPLIED_MODEL_SETTINGS = frozenset(spec.name for spec in dataclasses.fields(ModelConfig)) - set(
    APPLIED_MODEL_SETTINGS
)


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


def validate(args: argparse.Namespace) -> None:
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
    if args.max_steps == 0 or args.max_steps < -1:
        raise CLIError(f"--max_steps must be positive (or -1 to train --num_train_epochs), got {args.max_steps}")
    pairs = args.optim_args.replace(" ", "").split(",") if args.optim_args else []
    if any(pair.count("=") != 1 for pair in pairs):  # as the Trainer reads them when it builds the optimizer
        raise CLIError(f"--optim_args {args.optim_args!r}: write key=value pairs joined by commas, e.g. 'eps=1e-6'")
    if args.use_liger_kernel and not is_liger_kernel_available():
        raise CLIError("--use_liger_kernel needs the liger-kernel package: pip install liger-kernel")
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

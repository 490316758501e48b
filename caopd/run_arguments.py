"""The run's own flags, as dataclasses for TRL's parser: ``RunArguments`` (the backbone, the task and its data, the
question batch, the held-out questions) and ``CaOPDModelConfig`` (TRL's ``ModelConfig`` with the original release's
model and attention defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from caopd.prompt_lengths import OVERLONG_CHOICES
from caopd.tasks import TASK_NAMES
from caopd.verifiers import TOOLUSE_MATCHES

BACKBONES = {
    "sdft": "TRL's SDFTTrainer",
    "sdpo": "TRL's SDPOTrainer",
    "grpo": "TRL's GRPOTrainer (the RL baselines)",
}


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


@dataclass
class _Switch:
    on: bool = False


# How the parser reads a boolean field's value ("true", "no", ...): its switches are the actions of this type. Taken
# from a parser, since TRL keeps the function in a private module of its own (trl.scripts._hf_argparser).
SWITCH_TYPE = TrlParser(_Switch)._option_string_actions["--on"].type

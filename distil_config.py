"""The backbones' configurations: TRL's own (SDFT, SDPO) plus the CaOPD fields, declared once in ``CaOPDFields``;
and ``RLConfig``, TRL's GRPO config for the paper's RL baselines (no CaOPD step).

Defaults follow the CaOPD paper (Table 6) where TRL's differ: reverse KL, EMA teacher, top-k 100 (SDFT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig
from trl.experimental.sdft import SDFTConfig
from trl.experimental.sdpo import SDPOConfig

from caopd.confidence import DEFAULT_READING, READING_HELP, check_reading
from caopd.rewards import RL_REWARDS
from caopd.targets import TEACHER_MODES

TEACHER_KINDS = ("base", "live", "ema")
# Teacher prompts add to the question a demonstration (up to a completion long), the closing instruction and the
# CaOPD note: about 80 tokens of wording with common tokenizers, so 128 leaves a margin.
TEACHER_WORDING_TOKENS = 128


def teacher_prompt_limit(max_prompt_length: int, max_completion_length: int, requested: int | None = None) -> int:
    """The teacher prompt's length limit: as requested, else room for the question, a demonstration up to a
    completion long, and the wording."""
    return requested if requested is not None else max_prompt_length + max_completion_length + TEACHER_WORDING_TOKENS


def vllm_context_length(
    max_prompt_length: int, max_completion_length: int, max_teacher_prompt_length: int, self_consistency: bool
) -> int:
    """The context vLLM needs for this run: the longest prompt it is sent plus a completion. Rollouts come from
    student prompts; under self-consistency the greedy references come from teacher prompts, which are longer."""
    longest = max(max_prompt_length, max_teacher_prompt_length) if self_consistency else max_prompt_length
    return longest + max_completion_length


@dataclass
class ConfidenceReadingField:
    """How every backbone reads a stated confidence: in its logs and, for the RL baselines, in the reward."""

    confidence_reading: str = field(default=DEFAULT_READING, metadata={"help": READING_HELP})

    def _check_reading(self) -> None:
        check_reading(self.confidence_reading)


@dataclass
class CaOPDFields(ConfidenceReadingField):
    """The CaOPD settings every distillation backbone has (mixed into TRL's config of the backbone)."""

    empirical_calibration: bool = field(
        default=True,
        metadata={
            "help": "CaOPD: write the empirical success rate P_acc of the K rollouts into the student completion, the "
            "teacher's demonstration and a teacher note. False gives the plain backbone (SDFT or SDPO)."
        },
    )
    max_teacher_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Length limit of teacher prompts (question + privileged context), separate from the student's "
            "max_prompt_length. None: max_prompt_length + max_completion_length + 128 (wording and note)."
        },
    )
    save_rollouts: bool = field(
        default=False,
        metadata={
            "help": "Write every rollout (text, verdict, P_acc, rewritten target) to output_dir/rollouts/rank<N>.jsonl."
        },
    )
    self_consistency: bool = field(
        default=False,
        metadata={
            "help": "No verifier (Teacher-Anchored Self-Consistency, paper Appendix B.6): a rollout counts as correct "
            "when its final answer is equivalent to a greedy reference answer the model gives under the teacher "
            "context."
        },
    )
    equivalence: str = field(
        default="task",
        metadata={
            "help": "With self_consistency: how a rollout is compared with the reference. 'task': the task's own "
            "reading of the answer agrees (MCQ letter, tool-call sequence, arithmetic result, a custom verifier's "
            "extraction); 'normalized_exact': the final answers match; a built-in verifier name or 'regex:PATTERN': "
            "its reading agrees; 'module:function': your function of (response, reference)."
        },
    )
    teacher_model_kind: str = field(
        default="ema",
        metadata={"help": "Teacher weights: 'ema' (EMA of the student), 'base' (initial student) or 'live'."},
    )
    enable_thinking: bool = field(
        default=False,
        metadata={
            "help": "Thinking mode of chat templates that have the switch (Qwen3), for student and teacher prompts "
            "alike; the paper trains with it off. Templates without the switch ignore it."
        },
    )
    num_loss_tokens_to_skip: int = field(
        default=3,
        metadata={"help": "First completion tokens left out of the loss (the original release skips 3)."},
    )
    shared_prefix: bool = field(
        default=True,
        metadata={
            "help": "Compute each distinct prompt of a micro-batch once for the student and the teacher "
            "(caopd.shared_prefix); exact, under gradient checkpointing, DeepSpeed ZeRO-3 and FSDP alike. Off by "
            "itself where it cannot be exact (flash attention, sliding-window layers); the run config says why."
        },
    )

    chunked_loss: bool = field(
        default=True,
        metadata={
            "help": "Compute the loss over chunks of completion positions from the final hidden states, so that no "
            "batch x length x vocabulary logits exist at once (caopd.chunked_loss); exact. Off by itself where it "
            "cannot be exact or is not yet built (the SDPO backbone); the run config says why."
        },
    )
    loss_chunk_size: int = field(
        default=1024,
        metadata={"help": "Completion positions per chunk of the chunked loss."},
    )

    def _check_caopd_fields(self) -> None:
        """The checks every backbone's config runs before TRL's own."""
        self._check_reading()
        if self.loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be 1 or more, got {self.loss_chunk_size}")
        if self.teacher_model_kind not in TEACHER_KINDS:
            raise ValueError(
                f"teacher_model_kind must be one of {', '.join(TEACHER_KINDS)}, got {self.teacher_model_kind!r}"
            )

    def _derive_caopd_lengths(self) -> None:
        """After TRL's checks: the thinking switch, the teacher prompt limit and vLLM's context."""
        # TRL renders student and teacher prompts (and self-consistency references) with these template arguments.
        self.chat_template_kwargs = {**(self.chat_template_kwargs or {}), "enable_thinking": self.enable_thinking}
        completion = self.max_completion_length or 0
        if self.max_teacher_prompt_length is None and self.max_prompt_length is not None:
            self.max_teacher_prompt_length = teacher_prompt_limit(self.max_prompt_length, completion)
        if self.use_vllm and self.vllm_max_model_length is None and self.max_prompt_length is not None:
            # vLLM would otherwise size its KV cache for the model's whole context (40,960 tokens for Qwen3).
            self.vllm_max_model_length = vllm_context_length(
                self.max_prompt_length, completion, self.max_teacher_prompt_length, self.self_consistency
            )


@dataclass
class DistilConfig(CaOPDFields, SDFTConfig):
    """CaOPD on the SDFT backbone: TRL's ``SDFTConfig``, the CaOPD fields, and the teacher's demonstration."""

    teacher_context_mode: str = field(
        default="demo",
        metadata={
            "help": "Privileged context of the teacher: 'demo' (the golden demonstration, SDFT) or "
            "'correct_solution' (another verified correct rollout of the same prompt, SDPO-style; falls back to the "
            "golden demonstration when none of the K rollouts is correct)."
        },
    )
    teacher_instruction: str | None = field(
        default=None,
        metadata={
            "help": "Closing instruction of the teacher context, replacing the paper's wording for the mode "
            "(demo: 'Now answer with a response of your own, including the thinking process.'). None: the paper's."
        },
    )
    distillation_alpha: float = field(
        default=1.0,
        metadata={"help": "0 = forward KL, 1 = reverse KL (paper default), in between = generalized JSD."},
    )

    def __post_init__(self):
        self._check_caopd_fields()
        if self.teacher_context_mode not in TEACHER_MODES:
            raise ValueError(
                f"teacher_context_mode must be one of {', '.join(TEACHER_MODES)}, got {self.teacher_context_mode!r}"
            )
        if self.teacher_instruction is not None and not self.teacher_instruction.strip():
            raise ValueError("teacher_instruction is empty; give a sentence, or leave it unset for the paper's wording")
        super().__post_init__()
        self._derive_caopd_lengths()


@dataclass
class SDPODistilConfig(CaOPDFields, SDPOConfig):
    """CaOPD on the SDPO backbone: TRL's ``SDPOConfig`` (its defaults: sampled-token reverse KL, EMA teacher,
    importance-sampling clip 2) and the CaOPD fields. The teacher sees a successful rollout of the same question
    (TRL's reprompt templates); the CaOPD note goes before the reprompt's closing instruction."""

    num_loss_tokens_to_skip: int = field(
        default=0,
        metadata={"help": "First completion tokens left out of the loss (SDPO skips none)."},
    )

    def __post_init__(self):
        self._check_caopd_fields()
        self._check_group_size()
        super().__post_init__()
        self._derive_caopd_lengths()
        self.max_reprompt_len = self.max_teacher_prompt_length  # TRL's name for the teacher prompt's limit

    def _check_group_size(self) -> None:
        """One rollout per question leaves SDPO nothing to learn from: TRL's trainer would run every step with its
        distillation inactive (a warning per step) or a policy term whose group advantage is undefined (NaN)."""
        if self.num_generations >= 2:
            return
        if self.dont_reprompt_on_self_success:
            raise ValueError(
                f"num_generations={self.num_generations} under the sdpo backbone: its teacher is shown a successful "
                "sibling rollout of the same question, and one rollout has none, so no step would distil; use 2 or "
                "more (the paper: 8), or --no-dont_reprompt_on_self_success to let a rollout be its own demonstration"
            )
        if self.distillation_weight < 1.0:
            raise ValueError(
                f"num_generations={self.num_generations} under the sdpo backbone with distillation_weight "
                f"{self.distillation_weight}: the policy term's group advantage needs 2 or more rollouts per "
                "question; use 2 or more, or distillation_weight 1"
            )


@dataclass
class RLConfig(ConfidenceReadingField, GRPOConfig):
    """The paper's RL baselines: TRL's ``GRPOConfig`` and the reward (``rl_reward``); no teacher, no CaOPD step."""

    rl_reward: str = field(
        default="correctness",
        metadata={
            "help": "correctness (1 if the verifier accepts the answer, else 0: GRPO), rlcr (RLCR's three gated terms: "
            "format, accuracy, Brier score of the stated confidence) or car (the same with a margin-separated "
            "calibration term); see caopd.rewards."
        },
    )
    car_margin: float = field(
        default=0.5,
        metadata={"help": "car: every correct answer's calibration term is at least margin above every wrong one's."},
    )
    max_prompt_length: int | None = field(
        default=1024,
        metadata={"help": "Prompt limit in tokens; longer prompts are cut from the left (TRL's GRPO has no limit)."},
    )
    save_rollouts: bool = field(
        default=False,
        metadata={"help": "Write every rollout (text, verdict, confidence, reward) to output_dir/rollouts/."},
    )
    enable_thinking: bool = field(
        default=False,
        metadata={"help": "Thinking mode of chat templates that have the switch (Qwen3); the paper: off."},
    )
    shared_prefix: bool = field(
        default=True,
        metadata={
            "help": "Compute each distinct prompt of a micro-batch once in the policy (and reference) forward "
            "(caopd.shared_prefix); exact. Off by itself where it cannot be exact; the run config says why."
        },
    )

    def __post_init__(self):
        self._check_reading()
        if self.rl_reward not in RL_REWARDS:
            raise ValueError(f"rl_reward must be one of {', '.join(RL_REWARDS)}, got {self.rl_reward!r}")
        if not 0.0 <= self.car_margin < 1.0:
            raise ValueError(f"car_margin must lie in [0, 1), got {self.car_margin}")
        super().__post_init__()
        self.chat_template_kwargs = {**(self.chat_template_kwargs or {}), "enable_thinking": self.enable_thinking}
        if self.use_vllm and self.vllm_max_model_length is None and self.max_prompt_length is not None:
            self.vllm_max_model_length = self.max_prompt_length + (self.max_completion_length or 0)

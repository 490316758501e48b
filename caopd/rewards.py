"""Reward functions in TRL's interface (``reward(prompts, completions, **dataset columns) -> list[float]``).

``VerifierReward`` is a task's verifier as a reward: SDPO's successful rollouts are exactly those CaOPD counts in
P_acc, and GRPO's correctness reward is the same judgment. The paper's calibration-aware RL baselines are trained on
RLCR's own pipeline (``rl_reward_functions``): three terms, format, accuracy and a calibration term (RLCR's Brier
score, or a margin-separated one with CAR's stated properties), weighted 0.5 each through TRL's ``reward_weights``,
and all three zero for a malformed response. The stated confidence is read by the project's one parser, with the
same reading as evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from caopd.confidence import DEFAULT_READING, StatedConfidence, check_reading, read_confidence
from caopd.tasks.base import Task


def completion_text(completion: Any) -> str:
    """The response text of a TRL completion: plain text, or the assistant message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


class VerifierReward:
    """1.0 for a response the task's verifier accepts, else 0.0 (the task's ``ground_truth`` column)."""

    def __init__(self, task: Task):
        self.task = task
        self.__name__ = f"{task.name}_verifier"  # TRL names its reward metrics after this
        # With self-consistency the trainer sets, per step, a judge of (prompt id, text) against that step's
        # greedy references; the verdicts then come from it instead of the verifier.
        self.judge: Callable[[int, str], bool] | None = None

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], ground_truth: Sequence[str], **columns: Any
    ) -> list[float]:
        texts = [completion_text(completion) for completion in completions]
        if self.judge is not None:
            return [float(self.judge(uid, text)) for uid, text in zip(columns["prompt_uid"], texts, strict=True)]
        return [float(self.task.verify(text, truth)) for text, truth in zip(texts, ground_truth, strict=True)]


RL_REWARDS = ("correctness", "rlcr", "car")
CAR_MARGIN = 0.5
# RLCR's released GRPO configuration: each term weighted 0.5 through TRL's reward_weights, rewards not rescaled.
RLCR_TERM_WEIGHT = 0.5
RLCR_CONFIG = {"scale_rewards": "none"}


def brier_term(correct: bool, confidence: float) -> float:
    """RLCR's calibration term, 1 - (1[c] - q)^2 in [0, 1]: a proper scoring rule, so under accuracy p its
    expectation is maximized at q = p."""
    return 1.0 - (float(correct) - confidence) ** 2


def car_term(correct: bool, confidence: float, margin: float = CAR_MARGIN) -> float:
    """A margin-separated calibration term with the properties CAR's MSCR states (Xuan et al. 2026), in [0, 1] like
    RLCR's Brier term it replaces: every correct answer scores at least ``margin`` above every wrong one; the more
    confident an error, the lower it scores; and it stays a proper (Brier) score, maximized in expectation at q = p.
    Correct: (1 + m)/2 + (1 - m)/2 (1 - (1 - q)^2), in [(1 + m)/2, 1]; wrong: (1 - m)/2 (1 - q^2), in
    [0, (1 - m)/2]. The exact formula of the CAR paper could not be read (docs/differences.md): this is our form of
    its stated properties."""
    spread = (1.0 - margin) / 2.0
    if correct:
        return 1.0 - spread + spread * (1.0 - (1.0 - confidence) ** 2)
    return spread * (1.0 - confidence**2)


@dataclass(frozen=True)
class JudgedBatch:
    """One batch of responses, judged once for every reward term: verdicts, stated confidences, well-formedness."""

    completions: Sequence[Any]
    verdicts: list[bool]
    confidences: list[StatedConfidence]
    well_formed: list[bool]


class ResponseJudge(VerifierReward):
    """The verifier's verdict, the stated confidence (read by ``reading``) and RLCR's format check of each response,
    computed once per batch and shared by the reward terms TRL calls one after another on the same completions.

    Format, as RLCR's released code checks it: the answer parses (where the task can read one) and the confidence
    is stated, parses and lies in [0, 1] as written (``1.67`` and ``85`` fail under either reading).
    """

    def __init__(self, task: Task, reading: str = DEFAULT_READING):
        super().__init__(task)
        self.reading = check_reading(reading)
        self.last: JudgedBatch | None = None

    @property
    def last_verdicts(self) -> list[bool]:
        return [] if self.last is None else self.last.verdicts

    def well_formed(self, text: str, confidence: StatedConfidence) -> bool:
        answered = self.task.answer_key is None or self.task.answer_key(text) is not None
        return answered and confidence.value is not None and not confidence.out_of_range

    def assess(self, prompts, completions, ground_truth, **columns) -> JudgedBatch:
        if self.last is not None and self.last.completions is completions:
            return self.last
        verdicts = [bool(v) for v in super().__call__(prompts, completions, ground_truth, **columns)]
        texts = [completion_text(completion) for completion in completions]
        confidences = [read_confidence(text, self.reading) for text in texts]
        formats = [self.well_formed(t, c) for t, c in zip(texts, confidences, strict=True)]
        self.last = JudgedBatch(completions, verdicts, confidences, formats)
        return self.last

    def __call__(self, prompts, completions, ground_truth, **columns) -> list[float]:
        """Plain GRPO's reward: the verdict alone."""
        return [float(v) for v in self.assess(prompts, completions, ground_truth, **columns).verdicts]


class GatedTerm:
    """One of RLCR's reward terms in TRL's interface: ``score(correct, confidence)`` for a well-formed response,
    0 for a malformed one (RLCR's gate). TRL logs each term as ``rewards/<name>/mean``."""

    def __init__(self, judge: ResponseJudge, name: str, score: Callable[[bool, float], float]):
        self.judge, self.score, self.__name__ = judge, score, name

    def __call__(self, prompts, completions, ground_truth, **columns) -> list[float]:
        batch = self.judge.assess(prompts, completions, ground_truth, **columns)
        return [
            self.score(correct, stated.value) if ok else 0.0
            for correct, stated, ok in zip(batch.verdicts, batch.confidences, batch.well_formed, strict=True)
        ]


def rl_reward_functions(
    task: Task, rule: str, margin: float = CAR_MARGIN, reading: str = DEFAULT_READING
) -> tuple[ResponseJudge, list[Callable], list[float] | None]:
    """(the judge, TRL's reward functions, their weights) for ``--rl_reward``: correctness is the verdict alone;
    rlcr and car are RLCR's three gated terms (format, accuracy, calibration: Brier, or the margin-separated one),
    weighted 0.5 each."""
    if rule not in RL_REWARDS:
        raise ValueError(f"--rl_reward must be one of {', '.join(RL_REWARDS)}, got {rule!r}")
    judge = ResponseJudge(task, reading)
    if rule == "correctness":
        judge.__name__ = "correctness"
        return judge, [judge], None
    calibration = brier_term if rule == "rlcr" else partial(car_term, margin=margin)
    terms = [
        GatedTerm(judge, "format", lambda correct, q: 1.0),
        GatedTerm(judge, "accuracy", lambda correct, q: float(correct)),
        GatedTerm(judge, "brier" if rule == "rlcr" else "car_calibration", calibration),
    ]
    return judge, terms, [RLCR_TERM_WEIGHT] * len(terms)

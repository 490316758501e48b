"""Reward functions in TRL's interface (``reward(prompts, completions, **dataset columns) -> list[float]``).

``VerifierReward`` is a task's verifier as a reward: SDPO's successful rollouts are exactly those CaOPD counts in
P_acc, and GRPO's correctness reward is the same judgment. ``CalibrationReward`` adds the stated confidence, read by
the project's one parser (the one evaluation uses), for the paper's calibration-aware RL baselines: RLCR's
Brier-penalized correctness and a margin-separated reward with CAR's stated properties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from caopd.confidence import parse_confidence
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


def rlcr_reward(correct: bool, confidence: float | None) -> float:
    """RLCR (Damani et al. 2025): correctness minus the Brier penalty, 1[c] - (q - 1[c])^2, in [-1, 1].

    A proper scoring rule in q: under accuracy p the expected reward is maximized at q = p. A response without a
    readable confidence is scored with the worst confidence it could have stated (q = 0 if correct, q = 1 if
    wrong): leaving the confidence out never pays, and correctness still ranks first.
    """
    c = float(correct)
    q = worst_confidence(correct) if confidence is None else confidence
    return c - (q - c) ** 2


def car_reward(correct: bool, confidence: float | None, margin: float = CAR_MARGIN) -> float:
    """A margin-separated calibration reward with the properties CAR's MSCR states (Xuan et al. 2026): every correct
    answer scores above every wrong one, by at least ``2 * margin``; the more confident an error, the lower it
    scores; and the confidence term is a proper (Brier) score, so the expected reward under accuracy p is maximized
    at q = p. Correct: margin + (1 - margin)(1 - (1 - q)^2), in [margin, 1]; wrong: -margin - (1 - margin) q^2, in
    [-1, -margin]. The exact formula of the CAR paper could not be read (docs/differences.md); this is our form of
    its stated properties. A missing confidence is scored as in ``rlcr_reward`` (the worst it could state).
    """
    q = worst_confidence(correct) if confidence is None else confidence
    if correct:
        return margin + (1.0 - margin) * (1.0 - (1.0 - q) ** 2)
    return -margin - (1.0 - margin) * q**2


def worst_confidence(correct: bool) -> float:
    """The confidence a response without one is scored with: the worst it could have stated."""
    return 0.0 if correct else 1.0


class CalibrationReward(VerifierReward):
    """The verifier's verdict and the response's stated confidence (the project's one parser) combined by
    ``rule`` (``rlcr_reward``, ``car_reward``); ``correctness`` is the verdict alone (plain GRPO)."""

    def __init__(self, task: Task, rule: str, margin: float = CAR_MARGIN):
        super().__init__(task)
        if rule not in RL_REWARDS:
            raise ValueError(f"--rl_reward must be one of {', '.join(RL_REWARDS)}, got {rule!r}")
        self.rule, self.margin = rule, margin
        self.__name__ = rule

    def __call__(self, prompts, completions, ground_truth, **columns):
        verdicts = super().__call__(prompts, completions, ground_truth, **columns)
        self.last_verdicts = [bool(v) for v in verdicts]
        if self.rule == "correctness":
            return verdicts
        confidences = [parse_confidence(completion_text(c)) for c in completions]
        if self.rule == "rlcr":
            return [rlcr_reward(c, q) for c, q in zip(self.last_verdicts, confidences, strict=True)]
        return [car_reward(c, q, self.margin) for c, q in zip(self.last_verdicts, confidences, strict=True)]

"""Rollout groups across processes: P_acc over all K rollouts of a prompt, wherever they were sampled.

TRL's sampler keeps a prompt's K copies in one global generation batch, but splits them across processes
whenever the per-process batch is not a multiple of K. Every process therefore shares a small record per
rollout (prompt id, verdict, and the text of correct ones), and every process derives the same groups.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from caopd.confidence import DEFAULT_READING, read_confidence


@dataclass(frozen=True)
class RolloutRecord:
    """What other processes need to know about one rollout."""

    uid: int
    rank: int
    index: int
    correct: bool
    confidence: float | None  # as the run's confidence reading reads the rollout
    confidence_out_of_range: bool = False  # the stated number lies outside [0, 1]
    solution: str | None = None  # the response text, kept only for correct rollouts (correct_solution mode)
    answered: bool | None = None  # the task's answer parses from the text (None: the task has no answer reader)


def local_records(
    uids: Sequence[int],
    texts: Sequence[str],
    verdicts: Sequence[bool],
    rank: int,
    keep_solutions: bool,
    reading: str = DEFAULT_READING,
    answer_key: Callable[[str], Hashable | None] | None = None,
) -> list[RolloutRecord]:
    """This process's records, in rollout order; the text of correct rollouts only where peers may need it, and
    whether the task's answer parses where the task has an answer reader (``Task.answer_key``)."""
    records = []
    for index, (uid, text, correct) in enumerate(zip(uids, texts, verdicts, strict=True)):
        stated = read_confidence(text, reading)
        answered = None if answer_key is None else answer_key(text) is not None
        records.append(
            RolloutRecord(
                uid=uid,
                rank=rank,
                index=index,
                correct=correct,
                confidence=stated.value,
                confidence_out_of_range=stated.out_of_range,
                solution=text if correct and keep_solutions else None,
                answered=answered,
            )
        )
    return records


def success_rates(records: Sequence[RolloutRecord]) -> dict[int, float]:
    """P_acc per prompt id: the share of its rollouts that the verifier accepted."""
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        totals[record.uid][0] += int(record.correct)
        totals[record.uid][1] += 1
    return {uid: correct / count for uid, (correct, count) in totals.items()}


def peer_solution(records: Sequence[RolloutRecord], rank: int, index: int, uid: int) -> str | None:
    """A verified correct rollout of the same prompt other than rollout (rank, index), or None.

    Rollouts take the next correct peer in a fixed order, so different rollouts of one prompt see
    different solutions where there are several.
    """
    peers = sorted(
        (r for r in records if r.uid == uid and r.correct and r.solution is not None),
        key=lambda r: (r.rank, r.index),
    )
    others = [r for r in peers if (r.rank, r.index) != (rank, index)]
    if not others:
        return None
    after = [r for r in others if (r.rank, r.index) > (rank, index)]
    return (after or others)[0].solution


def teacher_references(
    demonstrations: Sequence[str], uids: Sequence[int], records: Sequence[RolloutRecord], rank: int, mode: str
) -> tuple[list[str], int]:
    """What the teacher is shown for each local rollout, and how many fell back to the golden demonstration.

    ``demo``: the golden demonstration. ``correct_solution``: another verified correct rollout of the same prompt
    (``peer_solution``), or the demonstration when the group has none.
    """
    if mode != "correct_solution":
        return list(demonstrations), 0
    references, fallbacks = [], 0
    for index, (demonstration, uid) in enumerate(zip(demonstrations, uids, strict=True)):
        solution = peer_solution(records, rank, index, uid)
        fallbacks += solution is None
        references.append(demonstration if solution is None else solution)
    return references, fallbacks


def step_statistics(records: Sequence[RolloutRecord], rates: dict[int, float]) -> dict[str, float]:
    """What a training step logs about its groups: how P_acc spreads, and what the raw rollouts state.

    Questions with P_acc 0 or 1 teach no graded confidence; comparing the stated confidence of the raw rollouts
    (0 where missing, read by the run's confidence reading) with the mean P_acc shows over- or underconfidence as
    training goes; the out-of-range share counts rollouts that state a number outside [0, 1]. The rollout accuracy
    and, where the task reads answers, the share of rollouts with a parsable answer are the first signs of a
    collapse (docs/sdpo_stability.md).
    """
    values = list(rates.values())
    confidences = [record.confidence for record in records]
    answered = [record.answered for record in records if record.answered is not None]
    rates_of_answers = {"caopd/answer_rate": sum(answered) / len(answered)} if answered else {}
    return {
        **rates_of_answers,
        "caopd/rollout_accuracy": sum(record.correct for record in records) / len(records),
        "caopd/p_acc_mean": sum(values) / len(values),
        "caopd/p_acc_zero_share": sum(v == 0.0 for v in values) / len(values),
        "caopd/p_acc_one_share": sum(v == 1.0 for v in values) / len(values),
        "caopd/confidence_format_rate": sum(c is not None for c in confidences) / len(records),
        "caopd/rollout_confidence_mean": sum(c or 0.0 for c in confidences) / len(records),
        "caopd/rollout_confidence_out_of_range": sum(r.confidence_out_of_range for r in records) / len(records),
    }

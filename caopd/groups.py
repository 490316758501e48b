"""Rollout groups across processes: P_acc over all K rollouts of a prompt, wherever they were sampled.

TRL's sampler keeps a prompt's K copies in one global generation batch, but splits them across processes
whenever the per-process batch is not a multiple of K. Every process therefore shares a small record per
rollout (prompt id, verdict, and the text of correct ones), and every process derives the same groups.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RolloutRecord:
    """What other processes need to know about one rollout."""

    uid: int
    rank: int
    index: int
    correct: bool
    confidence: float | None
    solution: str | None = None  # the response text, kept only for correct rollouts (correct_solution mode)


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

"""The rollout log of ``--save_rollouts``: every training rollout, its verdict, P_acc, target and teacher context.

One JSON line per rollout in ``output_dir/rollouts/rank<N>.jsonl``, appended step by step by each process. A run
that (re)starts at step s first drops what was logged from step s on: a resumed run then logs the steps it redoes
once, and a fresh run in a used folder starts a new log instead of appending to the old run's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from caopd.atomic import write_text_atomically
from caopd.groups import RolloutRecord
from caopd.targets import rewrite_completion_text


class RolloutLog:
    """One process's log file."""

    def __init__(self, output_dir: str | Path, rank: int):
        self.path = Path(output_dir) / "rollouts" / f"rank{rank}.jsonl"

    def trim(self, start_step: int) -> None:
        """Drop the rows of step ``start_step`` and later (and a last line cut short by a killed run)."""
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if logged_step(line) < start_step]
        write_text_atomically(self.path, "".join(line + "\n" for line in kept))

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_rollout_rows(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every logged rollout of a run, process by process; lines a killed run cut short are left out."""
    rows = []
    for path in sorted((Path(output_dir) / "rollouts").glob("rank*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        rows += [json.loads(line) for line in lines if logged_step(line) != float("inf")]
    return rows


def logged_step(line: str) -> float:
    """The step of one log line; a line cut short by a killed run counts as never logged (infinite step)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
        return float("inf")


def rollout_rows(
    step: int,
    uids: Sequence[int],
    texts: Sequence[str],
    records: Sequence[RolloutRecord],
    p_acc: Sequence[float],
    contexts: Sequence[str],
    calibrate: bool,
) -> list[dict[str, Any]]:
    """The log rows of one process's rollouts (``records`` are that process's own, in rollout order)."""
    return [
        {
            "step": step,
            "uid": uid,
            "rank": record.rank,
            "correct": record.correct,
            "confidence": record.confidence,
            "p_acc": p,
            "completion": text,
            "target": rewrite_completion_text(text, p) if calibrate else text,
            "teacher_context": context,
        }
        for uid, text, record, p, context in zip(uids, texts, records, p_acc, contexts, strict=True)
    ]


class RolloutLogTrimCallback(TrainerCallback):
    """At train begin (after a resume has set the step), forget the logged rollouts the run is about to redo."""

    def __init__(self, log: RolloutLog):
        self.log = log

    def on_train_begin(self, args, state, control, **kwargs):
        self.log.trim(state.global_step)

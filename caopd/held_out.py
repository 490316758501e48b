"""Held-out calibration while a run trains (``--eval_steps N``), the Trainer's evaluation turned into the paper's.

Every N optimizer steps the policy answers questions it never trains on, and the answers are judged and measured
as the evaluation scripts measure them: the task's verifier, the confidence read with ``--confidence_reading``,
``caopd.metrics.calibration_metrics`` (accuracy, ECE, Brier, SPR, AUROC, the overconfidence gap, the mean stated
confidence, format adherence). The sampling is the run's own (its generation backend, vLLM or transformers, and its
temperature and completion length), through the backbone's TRL generation method, so ZeRO-3, FSDP and the vLLM
weight sync are TRL's. Each process answers its share of the questions once; the answers are gathered and every
process computes the same metrics.

The Trainer logs them (``eval_accuracy``, ``eval_ece``, ...; ``eval/accuracy`` in wandb and TensorBoard) and keeps
them in ``trainer_state.json``'s log history, which a checkpoint carries: ``eval_history.jsonl`` in the output folder
is that history's evaluations, rewritten after each evaluation and when a resumed run starts its first epoch, so a
resume from step N keeps the evaluations up to N and drops those of the abandoned steps after it. At the end,
``calibration_curve.png`` draws accuracy, mean confidence and ECE against the step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import TrainerCallback

from caopd.atomic import write_text_atomically
from caopd.evaluation import judged_items
from caopd.generation import Response
from caopd.metrics import calibration_metrics
from caopd.plots import calibration_curve_png, write_png
from caopd.prompt_lengths import encode_within_limit
from caopd.tasks.arithmetic import generate_questions
from caopd.tasks.base import Task, TaskDataError

HISTORY_NAME = "eval_history.jsonl"
CURVE_NAME = "calibration_curve.png"
# The metrics logged at each evaluation, under the Trainer's prefix (eval_accuracy, ...), in this order.
LOGGED = (
    "accuracy",
    "ece",
    "brier_score",
    "spr",
    "auroc",
    "overconfidence_gap",
    "mean_confidence",
    "confidence_format_adherence",
    "length_cut_share",
    "n_samples",
)
# Also logged: how long the evaluation took, and the mean optimizer step since the previous one (the cost of
# evaluating every N steps is runtime / (N x seconds_per_step) of the training time: bench/eval_cost.py).
TIMES = ("runtime", "seconds_per_step")
ARITHMETIC_QUESTIONS = 64  # held-out arithmetic questions when --eval_split_size does not say


def prompt_key(prompt: Any) -> str:
    """A row's prompt as text that two equal prompts share (chat messages or a plain string)."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_held_out(rows: Dataset, size: float, seed: int) -> tuple[Dataset, Dataset]:
    """``--eval_split_size``: rows held out of the training rows, a count (at least 1) or a fraction (below 1),
    drawn with ``seed``; a training row whose prompt equals a held-out one is dropped, so no question is both."""
    count = int(size) if size >= 1 else math.ceil(size * len(rows))
    if size >= 1 and size != int(size):
        raise TaskDataError(f"--eval_split_size {size}: a count of rows must be whole (or give a fraction below 1)")
    if not 1 <= count < len(rows):
        raise TaskDataError(
            f"--eval_split_size {size} holds out {count} of the {len(rows)} training rows; leave at least one row "
            "for each side"
        )
    held = sorted(np.random.default_rng(seed).permutation(len(rows))[:count].tolist())
    held_prompts = {prompt_key(rows[index]["prompt"]) for index in held}
    kept = [index for index, prompt in enumerate(rows["prompt"]) if prompt_key(prompt) not in held_prompts]
    if not kept:
        raise TaskDataError(f"--eval_split_size {size}: every training row shares its prompt with a held-out row")
    return rows.select(kept), rows.select(held)


def held_out_rows(
    task: Task, train_rows: Dataset, eval_data: str | None, split_size: float | None, generated: bool, seed: int
) -> tuple[Dataset, Dataset, str]:
    """The training rows, the held-out rows and where those come from: ``eval_data`` less any question the training
    rows also have; rows held out of the training rows (``split_size``); or, for the arithmetic task's
    ``generated`` training questions, questions of its validation split (``split_size`` of them, default 64)."""
    if eval_data is not None:
        rows, dropped = without_training_prompts(task.load(eval_data), train_rows)
        if not len(rows):
            raise TaskDataError(f"--eval_data {eval_data}: every question in it is a training question too")
        also = f"; {dropped} that the training set also has left out" if dropped else ""
        return train_rows, rows, f"{len(rows)} questions of {eval_data}{also}"
    if generated:
        if split_size is not None and split_size != int(split_size):
            raise TaskDataError(f"--eval_split_size {split_size}: the arithmetic task takes a count of questions")
        count = int(split_size) if split_size is not None else ARITHMETIC_QUESTIONS
        rows = generate_questions(count, seed=seed, split="validation")
        return train_rows, rows, f"{count} arithmetic questions of the validation split"
    kept, held = split_held_out(train_rows, split_size, seed)
    return kept, held, f"{len(held)} of the {len(train_rows)} training rows held out ({len(kept)} left to train on)"


def held_out_questions(
    task: Task, rows: Dataset, tokenizer: Any, args: Any, samples: int, batch_size: int
) -> tuple[HeldOut, str | None]:
    """``rows`` as a run's held-out questions, their prompts encoded as the training prompts are and put through
    the same length rule (``--max_prompt_length``, ``--overlong_prompts``); and the rule's warning."""
    keep, prompt_ids, warning = encode_within_limit(
        tokenizer, list(rows["prompt"]), args.enable_thinking, args.max_prompt_length, args.overlong_prompts
    )
    held_out = HeldOut(rows.select(keep), prompt_ids, task, args.confidence_reading, samples, batch_size)
    return held_out, warning and f"held-out questions: {warning}"


def without_training_prompts(eval_rows: Dataset, train_rows: Dataset) -> tuple[Dataset, int]:
    """The evaluation rows whose prompt no training row has, and how many were dropped."""
    trained = {prompt_key(prompt) for prompt in train_rows["prompt"]}
    kept = [index for index, prompt in enumerate(eval_rows["prompt"]) if prompt_key(prompt) not in trained]
    return eval_rows.select(kept), len(eval_rows) - len(kept)


@dataclass
class HeldOut:
    """The held-out questions of a run: rows (``prompt``, ``ground_truth``), their prompts as token ids, the task
    that judges the answers and how: ``reading`` of the confidence, ``samples`` answers per question, generated
    ``batch_size`` answers at a time on each process (a multiple of ``samples``: a question's answers are
    generated in one batch)."""

    rows: Dataset
    prompt_ids: list[list[int]]
    task: Task
    reading: str
    samples: int = 1
    batch_size: int = 8

    def share(self, rank: int, world: int) -> tuple[list[int], int]:
        """The question indices ``rank`` answers, padded with its first one (or question 0) to the same count on
        every process (TRL's vLLM server mode gathers equal shares), and how many of them are its own."""
        per_process = math.ceil(len(self.prompt_ids) / world)
        own = list(range(rank * per_process, min(len(self.prompt_ids), (rank + 1) * per_process)))
        return own + [own[0] if own else 0] * (per_process - len(own)), len(own)


def held_out_metrics(items: list[dict[str, Any]], n_bins: int = 10) -> dict[str, float | int]:
    """The logged metrics of judged answers (no bootstrap: a training-time reading, not a final figure)."""
    metrics = calibration_metrics([i["correct"] for i in items], [i["confidence"] for i in items], n_bins, 0)
    metrics["length_cut_share"] = sum(i["cut_by_length"] for i in items) / len(items)
    metrics["n_samples"] = len(items)
    return {name: metrics[name] if name == "n_samples" else float(metrics[name]) for name in LOGGED}


class HeldOutEvaluation:
    """``evaluate()`` of the CaOPD trainers, mixed in before TRL's trainer class: given ``held_out=`` questions, the
    held-out calibration instead of TRL's evaluation loop (a loss on an evaluation dataset, which the paper does not
    report; an ``eval_dataset`` given without them still gets TRL's). ``sample_completions`` is the backbone's TRL
    generation, one completion per prompt."""

    held_out: HeldOut | None = None
    _last_evaluation: tuple[float, int] | None = None  # when the previous evaluation ended, and at which step

    def take_held_out(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The trainer's keyword arguments with ``held_out`` taken out and kept, its rows given to the Trainer as
        ``eval_dataset`` (its evaluation schedule asks for one; ``evaluate`` answers them, unprepared)."""
        self.held_out = kwargs.pop("held_out", None)
        if self.held_out is not None:
            kwargs["eval_dataset"] = self.held_out.rows
        return kwargs

    def sample_completions(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """One completion (token ids, end-of-sequence included when sampled) per prompt, each question's
        ``num_generations_eval`` copies side by side: SDFT's and SDPO's TRL generation, vLLM or transformers (in
        eval mode TRL's vLLM server mode samples each question's copies as one request)."""
        return self._generate(prompt_ids)[1]

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        if self.held_out is None:  # an eval_dataset given to the trainer itself: TRL's evaluation loop
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        was_training, started, step = self.model.training, time.perf_counter(), self.state.global_step
        self.model.eval()
        self.num_generations_eval = self.held_out.samples  # what TRL's vLLM path asks per question in eval mode
        try:
            with torch.random.fork_rng(devices=[self.accelerator.device] if torch.cuda.is_available() else []):
                torch.manual_seed(self.args.seed + step)  # training's own draws stay as they were
                items = gather_object(self._judged_share())
            items.sort(key=lambda item: (item["item_id"], item["sample_index"]))
            metrics = held_out_metrics(items) | {"runtime": time.perf_counter() - started}
            if self._last_evaluation is not None and step > self._last_evaluation[1]:
                metrics["seconds_per_step"] = (started - self._last_evaluation[0]) / (step - self._last_evaluation[1])
            metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
            self.log(metrics)  # in eval mode: TRL's log adds no training metrics to these
            self._last_evaluation = (time.perf_counter(), step)
        finally:
            if was_training:
                self.model.train()
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _judged_share(self) -> list[dict[str, Any]]:
        """This process's share of the held-out questions, answered and judged (padding left out)."""
        held_out = self.held_out
        indices, own = held_out.share(self.accelerator.process_index, self.accelerator.num_processes)
        prompts = [held_out.prompt_ids[index] for index in indices for _ in range(held_out.samples)]
        completions: list[list[int]] = []
        for start in range(0, len(prompts), held_out.batch_size):
            completions += self.sample_completions(prompts[start : start + held_out.batch_size])
        stops = set(self.eos_token_ids)
        responses = [
            Response(self.processing_class.decode(ids, skip_special_tokens=True), not stops.intersection(ids))
            for ids in completions
        ]
        per_question = [responses[i * held_out.samples : (i + 1) * held_out.samples] for i in range(own)]
        mine = held_out.rows.select(indices[:own])
        items = judged_items(held_out.task, mine, per_question, held_out.reading)
        for item in items:
            item["item_id"] = indices[item["item_id"]]
        return items


class HeldOutHistory(TrainerCallback):
    """``eval_history.jsonl`` kept equal to the evaluations in the Trainer's log history (so a resume keeps them up
    to its checkpoint), and ``calibration_curve.png`` drawn at the end; written by the main process."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)

    def on_epoch_begin(self, args, state, control, **kwargs):  # the first call after a resume's state is loaded
        self._write(state)

    def on_evaluate(self, args, state, control, **kwargs):
        self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        history = self._write(state)
        if history and state.is_world_process_zero:
            write_png(self.output_dir / CURVE_NAME, calibration_curve_png(history))

    def _write(self, state) -> list[dict[str, Any]]:
        history = evaluations(state.log_history)
        if state.is_world_process_zero:
            write_text_atomically(self.output_dir / HISTORY_NAME, "".join(json.dumps(h) + "\n" for h in history))
        return history


def evaluations(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The held-out evaluations in a Trainer log history: step, epoch, the metrics without their prefix and the
    times (None where not measured)."""
    return [
        {
            "step": entry["step"],
            "epoch": entry.get("epoch"),
            **{name: entry[f"eval_{name}"] for name in LOGGED},
            **{name: entry.get(f"eval_{name}") for name in TIMES},
        }
        for entry in log_history
        if "eval_ece" in entry
    ]


class HistoryError(ValueError):
    """A damaged ``eval_history.jsonl``: the line, and what to do."""


def read_history(output_dir: str | Path) -> list[dict[str, Any]]:
    """``eval_history.jsonl`` of a run folder ([] when it has none); a line that is not an evaluation record (a
    disk filled up, an editor) raises HistoryError naming it."""
    path = Path(output_dir) / HISTORY_NAME
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not (isinstance(entry, dict) and isinstance(entry.get("step"), int)):
            raise HistoryError(
                f"{path}, line {number}: not an evaluation record (damaged?); delete that line, or the file (a run "
                "resumed from a checkpoint writes it again from the checkpoint's log history)"
            )
        entries.append(entry)
    return entries

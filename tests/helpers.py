"""Shared test fixtures: a tiny trainer on a toy task whose verdicts are fixed by the sampled text."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from datasets import Dataset

from caopd.rollout_log import read_rollout_rows
from caopd.run_guard import HOLDER_NAME, RunLock
from caopd.targets import rewrite_completion_text
from caopd.tasks.base import Task, user_chat
from distil_config import DistilConfig, RLConfig, SDPODistilConfig
from distil_trainer import DistilTrainer
from grpo_trainer import RLTrainer
from sdpo_trainer import SDPODistilTrainer

BACKBONES = {
    "sdft": (DistilConfig, DistilTrainer),
    "sdpo": (SDPODistilConfig, SDPODistilTrainer),
    "grpo": (RLConfig, RLTrainer),
}
TEACHER_SETTINGS = ("teacher_update_rate", "empirical_calibration", "self_consistency")


def verify_even_length(response: str, _ground_truth) -> bool:
    """A verdict that depends only on the sampled text, so tests can recompute every P_acc."""
    return len(response) % 2 == 0


def toy_dataset(rows: int = 12) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [user_chat(f"Question {i}: name a colour.") for i in range(rows)],
            "demonstration": [f"Answer: colour {i}" for i in range(rows)],
            "ground_truth": [json.dumps(i) for i in range(rows)],
        }
    )


TOY_TASK = Task(name="toy", verify_fn=verify_even_length, load=lambda path: toy_dataset())


def toy_config(output_dir, backbone: str = "sdft", **overrides):
    settings = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "num_generations": 4,
        "max_completion_length": 24,
        "max_prompt_length": 96,
        "max_steps": 1,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "save_rollouts": True,
        "teacher_update_rate": 0.5,
        "seed": 0,
        "disable_tqdm": True,
    }
    settings.update(overrides)
    if backbone == "grpo":  # no teacher
        settings = {key: value for key, value in settings.items() if key not in TEACHER_SETTINGS}
    return BACKBONES[backbone][0](**settings)


def toy_trainer(
    model,
    tokenizer,
    output_dir,
    peft_config=None,
    backbone: str = "sdft",
    task: Task = TOY_TASK,
    held_out=None,
    **overrides,
):
    """A tiny trainer of either backbone on the toy task (verdict: the response has an even length); with
    ``held_out`` questions, evaluated every step."""
    if held_out is not None:
        overrides = {"eval_strategy": "steps", "eval_steps": 1, **overrides}
    return BACKBONES[backbone][1](
        model=model,
        args=toy_config(output_dir, backbone, **overrides),
        train_dataset=toy_dataset(),
        task=task,
        processing_class=tokenizer,
        peft_config=peft_config,
        held_out=held_out,
    )


def assert_lock_released(output_dir) -> None:
    """The run that held ``output_dir`` let go of it: its holder note is gone and the lock can be taken."""
    assert not (Path(output_dir) / HOLDER_NAME).exists()
    lock = RunLock(output_dir)
    lock.acquire()
    lock.release()


def read_rollouts(output_dir) -> list[dict]:
    return read_rollout_rows(output_dir)


def always_equivalent(_response: str, _reference: str) -> bool:
    return True


def capture_batches(trainer) -> dict[str, list]:
    """Record the raw rollouts and the final training batches of every generation."""
    captured = {"raw": [], "final": []}
    sample, prepare = trainer.sample_rollouts, trainer._prepare_training_batch

    def sample_and_keep(inputs):
        batch = sample(inputs)
        captured["raw"].append(trainer._get_completion_ids_list(batch))
        return batch

    def prepare_and_keep(inputs):
        batch = prepare(inputs)
        captured["final"].append((inputs, batch))
        return batch

    trainer.sample_rollouts, trainer._prepare_training_batch = sample_and_keep, prepare_and_keep
    return captured


def assert_rewritten_with_group_rates(trainer, captured, k: int) -> dict[int, list[bool]]:
    """Every final completion is its raw rollout rewritten with the P_acc of its prompt's K toy verdicts + EOS.

    Returns the verdicts per prompt id, for further checks.
    """
    raw_texts = [trainer._decode(trainer._strip_eos(ids)) for ids in captured["raw"][0]]
    inputs, batch = captured["final"][0]
    verdicts = defaultdict(list)
    for example, text in zip(inputs, raw_texts, strict=True):
        verdicts[example["prompt_uid"]].append(verify_even_length(text, None))
    assert all(len(group) == k for group in verdicts.values())  # K rollouts per prompt
    eos = trainer._tokenizer.eos_token_id
    for example, text, final_ids in zip(inputs, raw_texts, trainer._get_completion_ids_list(batch), strict=True):
        p_acc = sum(verdicts[example["prompt_uid"]]) / k
        assert final_ids[-1] == eos
        assert trainer._decode(final_ids[:-1]) == rewrite_completion_text(text, p_acc)
        assert len(final_ids) <= trainer.max_completion_length
    return verdicts


def record_references(trainer) -> list[dict[int, str]]:
    """Record the self-consistency references (prompt id -> text) of every generation."""
    recorded = []
    compute = trainer._self_consistency_references

    def compute_and_keep(inputs):
        references = compute(inputs)
        recorded.append(references)
        return references

    trainer._self_consistency_references = compute_and_keep
    return recorded

"""Shared test fixtures: a tiny trainer on a toy task whose verdicts are fixed by the sampled text."""

from __future__ import annotations

import json

from datasets import Dataset

from caopd.tasks.base import Task, user_chat
from distil_config import DistilConfig
from distil_trainer import DistilTrainer


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


def toy_config(output_dir, **overrides) -> DistilConfig:
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
    return DistilConfig(**settings)


def toy_trainer(model, tokenizer, output_dir, peft_config=None, **overrides) -> DistilTrainer:
    return DistilTrainer(
        model=model,
        args=toy_config(output_dir, **overrides),
        train_dataset=toy_dataset(),
        task=TOY_TASK,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def read_rollouts(output_dir) -> list[dict]:
    rows = []
    for file in sorted((output_dir / "rollouts").glob("rank*.jsonl")):
        rows += [json.loads(line) for line in file.read_text().splitlines()]
    return rows


def always_equivalent(_response: str, _reference: str) -> bool:
    return True

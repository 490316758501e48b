"""What a task is: a dataset in one canonical shape plus the verifier that judges its answers.

Every task loader returns a ``datasets.Dataset`` with these columns:

- ``prompt``: the student prompt, chat messages (``[{"role": ..., "content": ...}, ...]`` ending with the
  user turn), with the confidence instruction already in it;
- ``demonstration``: a golden response for the teacher, without any ``Confidence:`` line;
- ``ground_truth``: the reference answer as a JSON string (tasks differ in its type; JSON keeps Arrow happy).

The same ``verify(response, ground_truth)`` decides correctness in training (P_acc) and in evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

Verifier = Callable[[str, Any], bool]
CANONICAL_COLUMNS = ("prompt", "demonstration", "ground_truth")


class TaskDataError(ValueError):
    """Raised with a user-facing message when task data is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Task:
    """A named task: how to load its rows and how to judge a response against a row's ground truth."""

    name: str
    verify_fn: Verifier
    load: Callable[[str | None], Dataset]
    description: str = ""

    def verify(self, response: str, ground_truth_json: str) -> bool:
        """Judge ``response`` against the JSON-encoded ground truth; never raises on odd model output."""
        return bool(self.verify_fn(response, json.loads(ground_truth_json)))


def user_chat(text: str) -> list[dict[str, str]]:
    """A one-turn chat prompt: instruction-tuned models are trained (and evaluated) through their chat template."""
    return [{"role": "user", "content": text}]

"""Prompts longer than the length limit, found before a run starts instead of cut silently.

TRL cuts every student prompt to ``max_prompt_length`` tokens from the left: a ReAct prompt that is too long then
starts in the middle of its API documentation, while the teacher (its own limit) and evaluation see all of it.
So the prompts are measured first, rendered exactly as they will be, and by default the run stops with one line
that says how many are too long and how long the longest is. ``drop`` leaves them out and ``truncate`` keeps them
cut as TRL cuts them; both come with a warning for the caller to print.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caopd.prompts import encode_chat_prompts

OVERLONG_CHOICES = ("error", "drop", "truncate")


class PromptLengthError(ValueError):
    """Prompts are longer than the limit and the run was not told what to do with them."""


@dataclass(frozen=True)
class LengthCheck:
    """Which prompts to use (indices into the data), which of them are cut to the limit, and what to tell the user."""

    keep: list[int]
    truncated: list[int]
    warning: str | None = None


def check_prompt_lengths(lengths: list[int], limit: int | None, policy: str, flag: str) -> LengthCheck:
    """Apply ``policy`` (error, drop or truncate) to the prompts longer than ``limit`` tokens.

    ``flag`` names the limit in messages (e.g. ``--max_prompt_length``).
    """
    if policy not in OVERLONG_CHOICES:
        raise ValueError(f"--overlong_prompts must be one of {', '.join(OVERLONG_CHOICES)}, got {policy!r}")
    everything = list(range(len(lengths)))
    overlong = [index for index, length in enumerate(lengths) if limit is not None and length > limit]
    if not overlong:
        return LengthCheck(everything, [])
    longest = max(lengths)
    summary = (
        f"{len(overlong)} of {len(lengths)} prompts are longer than {flag} {limit} tokens (the longest has {longest})"
    )
    if policy == "error":
        raise PromptLengthError(
            f"{summary}: raise {flag} to {longest}, or pass --overlong_prompts drop (leave them out) or truncate "
            "(cut their beginning, as TRL would)"
        )
    if policy == "drop":
        dropped = set(overlong)
        kept = [index for index in everything if index not in dropped]
        if not kept:
            raise PromptLengthError(f"{summary}: dropping them leaves no prompt; raise {flag} to {longest}")
        return LengthCheck(kept, [], f"{summary}; --overlong_prompts drop leaves them out ({len(kept)} remain)")
    return LengthCheck(everything, overlong, f"{summary}; --overlong_prompts truncate keeps their last {limit} tokens")


def encode_within_limit(
    tokenizer: Any, prompts: list[Any], enable_thinking: bool, limit: int | None, policy: str
) -> tuple[list[int], list[list[int]], str | None]:
    """Chat prompts rendered and encoded as in training, put through the length ``policy``: the indices of the
    prompts kept, their token ids (cut to their last ``limit`` tokens where ``truncate`` says) and the warning."""
    prompt_ids = encode_chat_prompts(tokenizer, prompts, enable_thinking)
    check = check_prompt_lengths([len(ids) for ids in prompt_ids], limit, policy, "--max_prompt_length")
    cut = set(check.truncated)
    kept = [prompt_ids[index][-limit:] if index in cut else prompt_ids[index] for index in check.keep]
    return check.keep, kept, check.warning

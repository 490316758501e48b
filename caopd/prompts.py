"""The confidence instruction and the teacher contexts, as plain strings.

The student prompt asks for a verbalized confidence; the teacher prompt adds privileged context (a golden
demonstration or a verified correct rollout). Wordings follow the CaOPD paper; see DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REACT_ANCHOR = "\n\nBegin!\n"
TOOL_CONFIDENCE_INSTRUCTION = (
    "Confidence: your confidence level (0.0-1.0) regarding the success of this action, "
    "must be in numerical format, no other words or explanation."
)
ANSWER_CONFIDENCE_INSTRUCTION = (
    "Confidence: your confidence level (0.0-1.0) regarding your answer, "
    "must be in numerical format, no other words or explanation."
)
SCIENCE_CONFIDENCE_INSTRUCTION = "After the answer, on a new line, write\n" + ANSWER_CONFIDENCE_INSTRUCTION


def insert_tool_confidence_instruction(react_prompt: str) -> str:
    """Add the confidence line to a ReAct prompt's format block, just before its ``Begin!`` anchor."""
    if REACT_ANCHOR not in react_prompt:
        raise ValueError(
            "tool-use prompt has no '\\n\\nBegin!\\n' anchor: the confidence instruction goes just before it. "
            "Prepare the data with data/prepare_tooluse.py or keep the ToolAlpaca ReAct prompt format."
        )
    head, tail = react_prompt.rsplit(REACT_ANCHOR, 1)
    return f"{head}\n{TOOL_CONFIDENCE_INSTRUCTION}{REACT_ANCHOR}{tail}"


def append_confidence_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """Append ``instruction`` to the last user message of a chat prompt (earlier messages untouched)."""
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a chat prompt must end with a user message to carry the confidence instruction")
    last = dict(messages[-1])
    last["content"] = f"{last['content'].rstrip()}\n\n{instruction}"
    return [*messages[:-1], last]


def thinking_mode(tokenizer, enable_thinking: bool) -> str:
    """What ``enable_thinking`` does with this tokenizer's chat template: "on", "off", or nothing (no switch)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    if "enable_thinking" not in template:
        return "the chat template has no thinking switch"
    return "on" if enable_thinking else "off"


def encode_chat_prompts(tokenizer, prompts: list[list[dict[str, Any]]], enable_thinking: bool) -> list[list[int]]:
    """Token ids of chat prompts, rendered as training renders them (generation prompt, the thinking switch)."""
    encoded = tokenizer.apply_chat_template(
        prompts, add_generation_prompt=True, tokenize=True, return_dict=True, enable_thinking=enable_thinking
    )
    return [list(ids) for ids in encoded["input_ids"]]


def end_of_turn_token(tokenizer, stop_ids: Sequence[int]) -> int:
    """The stop token this chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``, ...).

    A rewritten completion ends with the stop token its rollout produced; one that the length limit cut (no stop
    token) gets this one, so that it ends as the model's turns end. Several chat models name another token as the
    tokenizer's EOS (Llama 3: ``<|end_of_text|>``), hence the template is asked. Falls back to the tokenizer's EOS
    when the template shows none of ``stop_ids`` after an assistant message.
    """
    marker = "caopd-end-of-turn-marker"
    chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
    try:
        rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # templates may refuse such a chat; the fallback below is then the best guess
        rendered = ""
    after = rendered.rsplit(marker, 1)[1] if marker in rendered else ""
    following = tokenizer.encode(after, add_special_tokens=False) if after else []
    return next((token for token in following if token in stop_ids), tokenizer.eos_token_id)


def with_privileged_context(messages: list[dict[str, Any]], context: str) -> list[dict[str, Any]]:
    """The teacher's chat prompt as TRL composes it (``"{prompt}\n\n{privileged_context}"`` in the last user turn,
    earlier messages kept)."""
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a chat prompt must end with a user message to carry the teacher's context")
    last = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{context}"}
    return [*messages[:-1], last]

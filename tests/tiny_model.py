"""A tiny random Llama with the real SmolLM2 tokenizer: fast, offline, and tokenizes like the real model."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from caopd.models import embedded_model_path, tiny_random_model


def real_tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_path(), padding_side="left", truncation_side="left")


def tiny_model(tokenizer, seed: int = 0):
    """A two-layer Llama of hidden size 32 (a few seconds per training step on CPU)."""
    return tiny_random_model(tokenizer, seed=seed, max_position_embeddings=2048)


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer that ``--model_name DIR`` loads."""
    tokenizer = real_tokenizer()
    tiny_model(tokenizer, seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# A chat template with a thinking switch in the manner of Qwen3's (written for the tests): with thinking off, the
# generation prompt ends with an empty think block.
THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def thinking_tokenizer():
    """The real tokenizer with a chat template that has Qwen3's ``enable_thinking`` switch."""
    tokenizer = real_tokenizer()
    tokenizer.chat_template = THINKING_TEMPLATE
    return tokenizer

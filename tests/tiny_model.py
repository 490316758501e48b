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

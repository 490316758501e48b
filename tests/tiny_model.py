"""A tiny random Llama with the real SmolLM2 tokenizer: fast, offline, and tokenizes like the real model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from caopd.models import embedded_model_path


def real_tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_path(), padding_side="left", truncation_side="left")


def tiny_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer that ``--model_name DIR`` loads."""
    tokenizer = real_tokenizer()
    tiny_model(tokenizer, seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

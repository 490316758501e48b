"""Sampling responses from a checkpoint: transformers (any machine) or vLLM (GPU, when installed)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``temperature=0`` is greedy decoding (then one sample per prompt is enough)."""

    num_samples: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8
    seed: int = 0


def generate(
    model_path: str, prompts: list[Chat], sampling: Sampling, backend: str = "transformers"
) -> list[list[str]]:
    """``sampling.num_samples`` responses for every chat prompt, in prompt order."""
    if backend == "vllm":
        return _generate_vllm(model_path, prompts, sampling)
    return _generate_transformers(model_path, prompts, sampling)


def _generate_transformers(model_path: str, prompts: list[Chat], sampling: Sampling) -> list[list[str]]:
    torch.manual_seed(sampling.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    greedy = sampling.temperature == 0
    options: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "do_sample": not greedy}
    if not greedy:
        options |= {"temperature": sampling.temperature, "top_p": sampling.top_p}
    options["num_return_sequences"] = sampling.num_samples
    options["pad_token_id"] = tokenizer.pad_token_id
    responses: list[list[str]] = []
    batches = range(0, len(prompts), sampling.batch_size)
    for start in tqdm(batches, desc="Generating", unit="batch"):
        batch = prompts[start : start + sampling.batch_size]
        encoded = tokenizer.apply_chat_template(
            batch, add_generation_prompt=True, tokenize=True, return_dict=True, padding=True, return_tensors="pt"
        ).to(device)
        output = generate_with_shared_prefill(model, encoded["input_ids"], encoded["attention_mask"], options)
        texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        k = sampling.num_samples
        responses += [texts[i * k : (i + 1) * k] for i in range(len(batch))]
    return responses


@torch.no_grad()
def generate_with_shared_prefill(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, options: dict[str, Any]
) -> torch.Tensor:
    """``model.generate(**options)`` with every prompt prefilled once, not once per returned sequence.

    Plain ``generate(num_return_sequences=k)`` copies each prompt k times before the prefill, so on CPU most of
    the time goes to encoding the same few-shot prompt k times. Here all prompt tokens but the last go through the
    model once, their KV cache is repeated k times, and ``generate`` continues from the last prompt token; rows of
    the output are grouped by prompt as with ``num_return_sequences``.
    """
    options = dict(options)
    k = options.pop("num_return_sequences", 1)
    if input_ids.shape[1] < 2:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=k, **options)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    cache = model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        use_cache=True,
    ).past_key_values
    cache.batch_repeat_interleave(k)
    return model.generate(
        input_ids=input_ids.repeat_interleave(k, 0),
        attention_mask=attention_mask.repeat_interleave(k, 0),
        past_key_values=cache,
        **options,
    )


def _generate_vllm(model_path: str, prompts: list[Chat], sampling: Sampling) -> list[list[str]]:
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("--backend vllm: vLLM is not installed (pip install vllm on a GPU machine)")
    from vllm import LLM, SamplingParams

    engine = LLM(model=model_path, seed=sampling.seed)
    params = SamplingParams(
        n=sampling.num_samples,
        temperature=sampling.temperature,
        top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
        max_tokens=sampling.max_new_tokens,
    )
    outputs = engine.chat(prompts, params, use_tqdm=True)
    return [[choice.text for choice in output.outputs] for output in outputs]

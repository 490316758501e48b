"""Sampling responses from a checkpoint: transformers (any machine) or vLLM (GPU, when installed)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer.utils import pad

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``temperature=0`` is greedy decoding (then one sample per prompt is enough)."""

    num_samples: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 8192
    batch_size: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Response:
    """One sampled response, and whether the length limit cut it (it ended without an end-of-sequence token)."""

    text: str
    cut_by_length: bool


def generate(
    model_path: str, prompt_ids: list[list[int]], sampling: Sampling, backend: str = "transformers"
) -> list[list[Response]]:
    """``sampling.num_samples`` responses for every prompt (token ids), in prompt order."""
    if backend == "vllm":
        return _generate_vllm(model_path, prompt_ids, sampling)
    return _generate_transformers(model_path, prompt_ids, sampling)


def _generate_transformers(model_path: str, prompt_ids: list[list[int]], sampling: Sampling) -> list[list[Response]]:
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
    eos = model.generation_config.eos_token_id
    stops = {tokenizer.eos_token_id, *([eos] if isinstance(eos, int) else eos or [])}
    responses: list[list[Response]] = []
    batches = range(0, len(prompt_ids), sampling.batch_size)
    for start in tqdm(batches, desc="Generating", unit="batch"):
        batch = [torch.tensor(ids) for ids in prompt_ids[start : start + sampling.batch_size]]
        input_ids = pad(batch, padding_value=tokenizer.pad_token_id, padding_side="left").to(device)
        attention_mask = pad([torch.ones_like(t) for t in batch], padding_value=0, padding_side="left").to(device)
        output = generate_with_shared_prefill(model, input_ids, attention_mask, options)
        completions = output[:, input_ids.shape[1] :].tolist()
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        flat = [Response(text, not stops.intersection(ids)) for text, ids in zip(texts, completions, strict=True)]
        k = sampling.num_samples
        responses += [flat[i * k : (i + 1) * k] for i in range(len(batch))]
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


def _generate_vllm(model_path: str, prompt_ids: list[list[int]], sampling: Sampling) -> list[list[Response]]:
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
    outputs = engine.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=True)
    return [[Response(c.text, c.finish_reason == "length") for c in output.outputs] for output in outputs]

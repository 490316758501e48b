"""Sampling responses from a checkpoint: transformers (any machine) or vLLM (GPU, when installed)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from trl.trainer.utils import pad

Chat = list[dict[str, str]]


# Sampling settings a model's generation_config may set, and what each is when neither a flag nor the model sets it
# (off: the plain softmax at the given temperature).
MODEL_SETTABLE = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


@dataclass(frozen=True)
class Sampling:
    """One sampling configuration, passed alike to transformers and to vLLM, so that a checkpoint gets the same
    distribution on either backend. ``temperature=0`` is greedy decoding: one response per prompt.

    The ranges are vLLM 0.31's (``SamplingParams``), checked before anything loads, on either backend."""

    num_samples: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 8192
    stop_token_ids: tuple[int, ...] = ()
    batch_size: int = 8
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def problem(self) -> str | None:
        """What vLLM would refuse in these settings (the transformers backend is held to the same), or None."""
        checks = [
            (self.num_samples >= 1, f"--num_samples must be at least 1, got {self.num_samples}"),
            (not self.greedy or self.num_samples == 1, self._greedy_samples_message()),
            (math.isfinite(self.temperature) and 0 <= self.temperature <= 2, "--temperature must lie in [0, 2]"),
            (0 < self.top_p <= 1, f"--top_p must lie in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"--top_k must be 0 (off) or positive, got {self.top_k}"),
            (0 <= self.min_p <= 1, f"--min_p must lie in [0, 1], got {self.min_p}"),
            (
                math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
                f"--repetition_penalty must be positive, got {self.repetition_penalty}",
            ),
            (self.max_new_tokens >= 1, f"--max_new_tokens must be at least 1, got {self.max_new_tokens}"),
        ]
        return next((message for holds, message in checks if not holds), None)

    def _greedy_samples_message(self) -> str:
        return (
            f"--temperature 0 is greedy decoding, which gives one response per question (vLLM refuses more), got "
            f"--num_samples {self.num_samples}; drop --num_samples or sample with --temperature above 0"
        )

    def transformers_options(self) -> dict[str, Any]:
        """``generate()`` arguments; every setting explicit, so that no transformers default (top-k 50) slips in."""
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": not self.greedy}
        if not self.greedy:
            options |= {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
            if self.min_p > 0:
                options["min_p"] = self.min_p
        options["repetition_penalty"] = self.repetition_penalty
        options["eos_token_id"] = list(self.stop_token_ids) or None
        options["num_return_sequences"] = self.num_samples
        return options

    def vllm_arguments(self) -> dict[str, Any]:
        """``vllm.SamplingParams`` arguments for the same distribution."""
        return {
            "n": self.num_samples,
            "temperature": self.temperature,
            "top_p": self.top_p if not self.greedy else 1.0,
            "top_k": self.top_k if not self.greedy else 0,
            "min_p": self.min_p if not self.greedy else 0.0,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": self.max_new_tokens,
            "stop_token_ids": list(self.stop_token_ids),
            "seed": self.seed,
        }


def resolve_sampling(
    requested: dict[str, Any], model_path: str, max_new_tokens: int, batch_size: int, seed: int
) -> tuple[Sampling, dict[str, str]]:
    """The sampling settings of an evaluation, resolved once for both backends, and where each value came from.

    ``requested`` holds the flags (``None`` = not given): ``num_samples`` and the settings of ``MODEL_SETTABLE``. A
    setting not given comes from the model's ``generation_config.json``, else it is off. Stop tokens are the
    tokenizer's EOS and every end token the generation config names. Raises ``ValueError`` for settings vLLM would
    refuse.
    """
    config = _generation_config(model_path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, off in MODEL_SETTABLE.items():
        flag, from_model = requested.get(name), getattr(config, name, None)
        values[name], sources[name] = (
            (flag, "flag")
            if flag is not None
            else (from_model, "generation_config")
            if from_model is not None
            else (off, "off")
        )
    greedy = values["temperature"] == 0
    num_samples = requested.get("num_samples")
    values["num_samples"], sources["num_samples"] = (
        (num_samples, "flag") if num_samples is not None else ((1 if greedy else 8), "default")
    )
    sampling = Sampling(
        **values,
        max_new_tokens=max_new_tokens,
        stop_token_ids=_stop_token_ids(model_path, config),
        batch_size=batch_size,
        seed=seed,
    )
    problem = sampling.problem()
    if problem:
        raise ValueError(problem)
    return sampling, sources


def _generation_config(model_path: str) -> GenerationConfig:
    try:
        return GenerationConfig.from_pretrained(model_path)
    except OSError:  # a checkpoint without generation_config.json: every setting is off unless given
        return GenerationConfig()


def _stop_token_ids(model_path: str, config: GenerationConfig) -> tuple[int, ...]:
    eos = config.eos_token_id
    stops = [eos] if isinstance(eos, int) else list(eos or [])
    tokenizer_eos = AutoTokenizer.from_pretrained(model_path).eos_token_id
    if tokenizer_eos is not None and tokenizer_eos not in stops:
        stops.insert(0, tokenizer_eos)
    return tuple(stops)


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
    options = sampling.transformers_options() | {"pad_token_id": tokenizer.pad_token_id}
    stops = set(sampling.stop_token_ids)
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

    try:  # built before the engine loads the model: vLLM's own check, after ours (Sampling.problem)
        params = SamplingParams(**sampling.vllm_arguments())
    except Exception as err:  # vLLM raises its own VLLMValidationError, not a ValueError
        raise ValueError(f"--backend vllm refuses the sampling settings: {err}") from err
    engine = LLM(model=model_path, seed=sampling.seed)
    outputs = engine.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=True)
    return [[Response(c.text, c.finish_reason == "length") for c in output.outputs] for output in outputs]

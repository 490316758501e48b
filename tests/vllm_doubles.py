"""vLLM 0.31's refusals and its engine, on a CPU: the layer below TRL's vLLM code and the evaluation's ``--backend
vllm``, without vLLM. Nothing here imports TRL, so ``tests/fake_vllm`` can serve it under the name ``vllm``.

- ``StrictSamplingParams`` validates like vLLM 0.31's ``SamplingParams`` (greedy means ``n = 1``, temperature in
  [0, 2], top-p in (0, 1], top-k >= -1, min-p in [0, 1], a positive repetition penalty, ``max_tokens >= 1``) and
  raises ``VLLMValidationError``, which is not a ``ValueError``, as vLLM's is not; an argument it does not know is a
  ``TypeError``. Every setting it accepts is honoured by the sampler.
- ``Engine`` is the model vLLM holds: built from a saved model folder (a model that exists only in memory has no
  path and fails, as ``LLM(model=...)`` does), refusing requests whose prompt plus ``max_tokens`` exceed
  ``max_model_len``, and loading weights by name (an unknown name or shape fails, as a PEFT prefix left in a name
  would on vLLM). Completion ids end with the stop token when generation stopped on one, as vLLM returns them.
- ``FakeLLM`` is ``vllm.LLM`` around an ``Engine``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class VLLMValidationError(Exception):
    """vLLM's error for refused sampling settings and requests (not a ValueError)."""


@dataclass
class StrictSamplingParams:
    """``vllm.SamplingParams`` (0.31) for the arguments TRL and this project pass; validated as vLLM does."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16
    logprobs: int | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None

    def __post_init__(self):
        rules = [
            (isinstance(self.n, int) and self.n >= 1, f"n must be at least 1, got {self.n}."),
            (math.isfinite(self.repetition_penalty), "repetition_penalty must be a finite number."),
            (
                self.repetition_penalty > 0,
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.",
            ),
            (math.isfinite(self.temperature), f"temperature must be a finite number, got {self.temperature}."),
            (0.0 <= self.temperature <= 2.0, f"temperature must be in [0, 2], got {self.temperature}."),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}."),
            (
                isinstance(self.top_k, int) and self.top_k >= -1,
                f"top_k must be 0 (disable), or at least 1, got {self.top_k}.",
            ),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}."),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}."),
            (
                self.logprobs is None or self.logprobs in (0, -1),
                "the stand-in returns only the sampled token's log-prob",
            ),
        ]
        for holds, message in rules:
            if not holds:
                raise VLLMValidationError(message)
        if self.temperature < 1e-5:  # greedy, as vLLM: sampling knobs off, one sequence
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if self.n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")
        self.stop_token_ids = list(self.stop_token_ids or [])


SAMPLING_KEYS = tuple(StrictSamplingParams.__dataclass_fields__)


class Engine:
    """The model vLLM holds: loaded from disk, sampled from with transformers, updated by name."""

    def __init__(self, path: str, max_model_len: int | None = None, seed: int = 0):
        if not path:
            raise ValueError("vLLM builds its engine from a model path, and the model has none (name_or_path is '')")
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_model_len = max_model_len or self.model.config.max_position_embeddings
        self.generator = torch.Generator().manual_seed(seed)
        self.loaded_names: list[str] = []

    def load_weights(self, weights) -> None:
        """vLLM's ``load_weights``: each (name, tensor) into the parameter of that name; anything else fails."""
        parameters = dict(self.model.named_parameters())
        for name, tensor in weights:
            if name not in parameters:
                raise KeyError(f"vLLM's model has no parameter named {name!r}")
            if tuple(parameters[name].shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} != vLLM's {tuple(parameters[name].shape)}")
            with torch.no_grad():
                parameters[name].copy_(tensor.to(parameters[name].dtype))
            self.loaded_names.append(name)

    def check_request(self, prompts: list[list[int]], params: StrictSamplingParams) -> None:
        for ids in prompts:
            if len(ids) + (params.max_tokens or 0) > self.max_model_len:
                raise VLLMValidationError(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{len(ids) + params.max_tokens} tokens ({len(ids)} in the messages, {params.max_tokens} in the "
                    "completion)."
                )

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], params: StrictSamplingParams) -> list[list[tuple]]:
        """``params.n`` completions per prompt: (token ids ending with the stop token if any, finish reason, the
        sampled tokens' log-probs after temperature and truncation, as vLLM's ``processed_logprobs``, or None)."""
        self.check_request(prompts, params)
        eos = self.model.generation_config.eos_token_id
        stops = {eos} if isinstance(eos, int) else set(eos or [])
        stops |= {self.tokenizer.eos_token_id, *params.stop_token_ids}
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(stops)
        options: dict[str, Any] = {"max_new_tokens": params.max_tokens, "num_return_sequences": params.n}
        options |= {"repetition_penalty": params.repetition_penalty, "eos_token_id": sorted(stops)}
        if params.temperature > 0:
            options |= {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            options["top_k"] = params.top_k if params.top_k > 0 else 0
            if params.min_p > 0:
                options["min_p"] = params.min_p
        else:
            options["do_sample"] = False
        if params.seed is not None:
            torch.manual_seed(params.seed)
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in prompts])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pad_token_id=pad_id,
            output_scores=params.logprobs is not None,
            return_dict_in_generate=True,
            **options,
        )
        results = []
        for number, row in enumerate(output.sequences[:, width:].tolist()):
            stop = next((i for i, token in enumerate(row) if token in stops), None)
            tokens, reason = (row, "length") if stop is None else (row[: stop + 1], "stop")
            logprobs = None
            if params.logprobs is not None:
                steps = [torch.log_softmax(output.scores[t][number].float(), -1) for t in range(len(tokens))]
                logprobs = [step[token].item() for step, token in zip(steps, tokens, strict=True)]
            results.append((tokens, reason, logprobs))
        return [results[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]


class FakeLLM:
    """``vllm.LLM`` for colocate mode and evaluation: an ``Engine`` behind vLLM's call surface."""

    def __init__(self, model: str, max_model_len: int | None = None, seed: int = 0, **_settings: Any):
        engine = Engine(model, max_model_len, seed)
        self.engine = engine
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=engine)))
        )

    def generate(self, prompts, sampling_params: StrictSamplingParams, use_tqdm: bool = False) -> list:
        if not isinstance(sampling_params, StrictSamplingParams):
            raise TypeError("sampling_params must be a vllm.SamplingParams")
        ids = [prompt["prompt_token_ids"] for prompt in prompts]
        outputs = []
        for prompt_ids, completions in zip(ids, self.engine.sample(ids, sampling_params), strict=True):
            choices = [
                SimpleNamespace(
                    token_ids=tokens,
                    text=self.engine.tokenizer.decode(tokens, skip_special_tokens=True),
                    finish_reason=reason,
                    logprobs=None if logprobs is None else _vllm_logprobs(tokens, logprobs),
                )
                for tokens, reason, logprobs in completions
            ]
            outputs.append(SimpleNamespace(prompt_token_ids=prompt_ids, outputs=choices))
        return outputs

    def reset_prefix_cache(self) -> None:
        pass

    def sleep(self, level: int = 1) -> None:
        pass

    def wake_up(self, tags=None) -> None:
        pass


def _vllm_logprobs(tokens: list[int], logprobs: list[float]) -> list[dict]:
    """vLLM's per-token log-prob entries (token id -> an object with ``logprob`` and ``rank``)."""
    return [{token: SimpleNamespace(logprob=value, rank=1)} for token, value in zip(tokens, logprobs, strict=True)]

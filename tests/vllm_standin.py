"""A stand-in for TRL's ``VLLMGeneration`` that generates with transformers: the trainer's vLLM path on a CPU.

TRL 1.16's ``SDFTTrainer`` builds ``trl.generation.vllm_generation.VLLMGeneration(...)`` when ``use_vllm`` is set
and then only touches ``generate(prompts, images, num_generations)``, ``sync_weights()``, ``max_completion_length``
and the sampling attributes. This class has that interface and reproduces what TRL's object does with it:

- its own copy of the weights, refreshed only by ``sync_weights`` (as vLLM holds its own copy);
- colocate mode: every process generates one completion per prompt it holds (vLLM ``n=1``);
- server mode: the prompts of all processes are gathered, the main process samples ``num_generations``
  completions for every ``num_generations``-th prompt (TRL assumes a prompt's copies are adjacent), broadcasts
  them, and process r keeps results ``r*len(prompts) .. (r+1)*len(prompts)-1``;
- completion ids end with the EOS token when generation stopped there, as vLLM returns them;
- log-probs only when asked for (TRL's self-distillation trainers ask for none);
- temperature 0 means greedy decoding, as in vLLM.

Every call is recorded in ``calls`` so that tests can check what the trainer asked for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from trl.trainer.utils import pad


@dataclass(frozen=True)
class GenerationCall:
    mode: str
    prompts: list[list[int]]
    num_generations: int
    max_tokens: int
    temperature: float


class TransformersVLLMGeneration:
    """Same constructor and methods as ``trl.generation.vllm_generation.VLLMGeneration``; transformers inside."""

    def __init__(
        self,
        model,
        accelerator,
        processing_class,
        mode: str = "colocate",
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_completion_length: int = 16,
        logprobs: int | None = 0,
        **_vllm_settings: Any,
    ):
        if mode not in ("colocate", "server"):
            raise ValueError(f"vllm_mode must be either 'server' or 'colocate', got '{mode}'.")
        self.model, self.accelerator, self.processing_class, self.mode = model, accelerator, processing_class, mode
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_completion_length, self.logprobs = max_completion_length, logprobs
        self.engine = copy.deepcopy(accelerator.unwrap_model(model)).eval()
        self.syncs = 0
        self.calls: list[GenerationCall] = []

    def sync_weights(self) -> None:
        self.engine.load_state_dict(self.accelerator.unwrap_model(self.model).state_dict())
        self.syncs += 1

    def generate(self, prompts: list[list[int]], images, num_generations: int, profiler=None) -> tuple:
        prompts = [list(ids) for ids in prompts]
        call = GenerationCall(self.mode, prompts, num_generations, self.max_completion_length, self.temperature)
        self.calls.append(call)
        if self.mode == "colocate":
            completions = self._sample(prompts, 1)
            return prompts, completions, self._logprobs(completions), self._logprobs(completions)
        gathered = gather_object(prompts)
        payload = None
        if self.accelerator.is_main_process:
            unique = gathered[::num_generations]
            payload = (unique, self._sample(unique, num_generations))
        shared = [payload]
        broadcast_object_list(shared, from_process=0)
        unique, completions = shared[0]
        repeated = [ids for ids in unique for _ in range(num_generations)]
        start = self.accelerator.process_index * len(prompts)
        mine = slice(start, start + len(prompts))
        return repeated[mine], completions[mine], self._logprobs(completions[mine]), self._logprobs(completions[mine])

    def _logprobs(self, completions: list[list[int]]) -> list | None:
        if self.logprobs is None:
            return None
        raise NotImplementedError("the stand-in returns no log-probs; TRL's self-distillation asks for none")

    @torch.no_grad()
    def _sample(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        """``n`` completions per prompt, grouped by prompt, each cut after its first EOS (kept, as vLLM does)."""
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        tensors = [torch.tensor(ids) for ids in prompts]
        input_ids = pad(tensors, padding_value=tokenizer.pad_token_id, padding_side="left")
        attention_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left")
        options: dict[str, Any] = {"max_new_tokens": self.max_completion_length, "num_return_sequences": n}
        if self.temperature > 0:
            options |= {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            options["top_k"] = self.top_k if self.top_k and self.top_k > 0 else None
        else:
            options["do_sample"] = False
        eos = self.engine.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        eos_ids.add(tokenizer.eos_token_id)
        output = self.engine.generate(
            input_ids=input_ids.to(self.engine.device),
            attention_mask=attention_mask.to(self.engine.device),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(eos_ids),
            **options,
        )
        completions = []
        for row in output[:, input_ids.size(1) :].tolist():
            stop = next((i for i, token in enumerate(row) if token in eos_ids), None)
            completions.append(row if stop is None else row[: stop + 1])
        return completions

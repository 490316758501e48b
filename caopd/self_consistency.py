"""Teacher-Anchored Self-Consistency (paper, Appendix B.6): P_acc without a verifier.

For each question the policy answers once, greedily, under the teacher context (the question and the golden
demonstration). A rollout then counts as correct when it is equivalent to that reference answer. Greedy decoding
makes the reference the same on every process that holds rollouts of the question, on either rollout backend.
"""

from __future__ import annotations

import copy
from typing import Any

from accelerate.utils import gather_object


def teacher_anchored_references(trainer, inputs: list[dict[str, Any]]) -> dict[int, str]:
    """One greedy reference text per prompt id of ``inputs``, generated under the teacher context."""
    firsts = {example["prompt_uid"]: example for example in inputs}
    prompts = trainer.reference_prompts(list(firsts.values()))
    with trainer._prompt_limit(trainer.args.max_teacher_prompt_length):
        prompt_ids = trainer._tokenize_prompts(prompts)
    reference_ids = greedy_completion_ids(trainer, prompt_ids)
    return {uid: trainer._decode(trainer._strip_eos(ids)) for uid, ids in zip(firsts, reference_ids, strict=True)}


def greedy_completion_ids(trainer, prompt_ids: list[list[int]]) -> list[list[int]]:
    """One greedy completion per prompt, on the trainer's rollout backend (transformers, vLLM colocate or server)."""
    if not trainer.use_vllm:
        sampling, trainer.generation_config = trainer.generation_config, copy.copy(trainer.generation_config)
        trainer.generation_config.do_sample = False
        try:
            return trainer._generate(prompt_ids)[1]
        finally:
            trainer.generation_config = sampling
    # The rollouts of this step were generated just before, so the vLLM weights are already in sync.
    generation, count = trainer.vllm_generation, len(prompt_ids)
    if generation.mode == "server" and trainer.accelerator.num_processes > 1:
        # TRL's server path hands process r the results r*n .. (r+1)*n-1 of the gathered prompts: every process
        # must send the same number n, so shorter lists are padded with a repeat of their last prompt.
        most = max(gather_object([count]))
        prompt_ids = prompt_ids + [prompt_ids[-1]] * (most - count)
    sampling_temperature, generation.temperature = generation.temperature, 0.0  # vLLM: temperature 0 = greedy
    try:
        _, completion_ids, _, _ = generation.generate(prompts=prompt_ids, images=None, num_generations=1)
    finally:
        generation.temperature = sampling_temperature
    return [list(ids) for ids in completion_ids[:count]]

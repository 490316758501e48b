"""Three-process run with the vLLM stand-in in server mode and self-consistency, for test_vllm_path.py.

Two prompts x K = 3 rollouts over three processes of 2 rollouts each: the processes hold 1, 2 and 1 distinct
prompts, so they ask the server for different numbers of references. The stand-in answers greedy requests with
their own prompt, so each reference shows which prompt it was made for. Each process writes the references it got
(prompt id -> text) to <output_dir>/references_rank<N>.json.
"""

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import trl.generation.vllm_generation as vllm_generation
from helpers import record_references, toy_trainer
from tiny_model import real_tokenizer, tiny_model
from vllm_standin import TransformersVLLMGeneration


class EchoingGreedyGeneration(TransformersVLLMGeneration):
    """Greedy completions echo their prompt (a random tiny model answers every prompt with the same newlines)."""

    def _sample(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        if self.temperature == 0:
            return [list(ids) for ids in prompts for _ in range(n)]
        return super()._sample(prompts, n)


if __name__ == "__main__":
    vllm_generation.VLLMGeneration = EchoingGreedyGeneration
    output_dir = Path(sys.argv[1])
    tokenizer = real_tokenizer()
    trainer = toy_trainer(
        tiny_model(tokenizer),
        tokenizer,
        output_dir,
        per_device_train_batch_size=2,
        num_generations=3,
        use_vllm=True,
        vllm_mode="server",
        self_consistency=True,
    )
    references = record_references(trainer)
    trainer.train()
    rank = trainer.accelerator.process_index
    (output_dir / f"references_rank{rank}.json").write_text(json.dumps(references[0]))
    trainer.accelerator.end_training()

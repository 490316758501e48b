"""Three-process run with the vLLM stand-in in server mode and self-consistency, for test_vllm_path.py.

Two prompts x K = 3 rollouts over three processes of 2 rollouts each: the processes hold 1, 2 and 1 distinct
prompts, so they ask the server for different numbers of references. The main process runs the stand-in server
(as ``vllm serve`` would run beside the trainer); its engine answers greedy requests with their own prompt, so each
reference shows which prompt it was made for. Each process writes the references it got (prompt id -> text) to
<output_dir>/references_rank<N>.json.
"""

import faulthandler
import gc
import json
import os
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from helpers import record_references, toy_trainer
from tiny_model import real_tokenizer, tiny_model
from vllm_doubles import Engine
from vllm_standin import FakeVLLMServer, install


class EchoingGreedyEngine(Engine):
    """Greedy completions echo their prompt (a random tiny model answers every prompt with the same newlines)."""

    def sample(self, prompts, params):
        if params.temperature == 0:
            return [[(list(ids), "stop", None)] * params.n for ids in prompts]
        return super().sample(prompts, params)


if __name__ == "__main__":
    # A run of this script takes about a minute: one that hangs prints where each thread of each rank stands and
    # exits, so the test fails with the stacks instead of waiting out its timeout.
    faulthandler.dump_traceback_later(300, exit=True)
    install()
    output_dir = Path(sys.argv[1])
    tokenizer = real_tokenizer()
    model = tiny_model(tokenizer)
    port, server = 0, None
    if int(os.environ.get("RANK", "0")) == 0:
        model.save_pretrained(output_dir / "tiny")
        tokenizer.save_pretrained(output_dir / "tiny")
        server = FakeVLLMServer(str(output_dir / "tiny"))
        server.engine.__class__ = EchoingGreedyEngine
        port = server.port
    trainer = toy_trainer(
        model,
        tokenizer,
        output_dir,
        per_device_train_batch_size=2,
        num_generations=3,
        use_vllm=True,
        vllm_mode="server",
        vllm_server_host="127.0.0.1",
        vllm_server_port=port,
        self_consistency=True,
    )
    references = record_references(trainer)
    trainer.train()
    rank = trainer.accelerator.process_index
    (output_dir / f"references_rank{rank}.json").write_text(json.dumps(references[0]))
    trainer.accelerator.end_training()  # as main.py does: no process group left for exit-time destructors
    del trainer
    gc.collect()
    if server is not None:
        server.stop()

"""Two-process training run for test_multiprocess.py (launched through torchrun as two gloo processes).

Three prompts x K=4 rollouts = 12 per step, 6 per process: the middle prompt's rollouts land on both.
``python mp_train.py OUT shared|unshared [sdft|sdpo|grpo [chunked|whole]]`` takes one SGD step with the shared-prefix
forward on or off (on the SDFT backbone, SDPO's, or GRPO with the RLCR reward), the loss chunked (the default) or on
whole logits, saves the weights to OUT/model and, per process, whether each forward shared its prompts to
OUT/shared_forwards_rank<N>.json and the loss chunking mode to OUT/loss_chunking_rank<N>.json.
"""

import gc
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from helpers import toy_trainer
from tiny_model import real_tokenizer, tiny_model

import caopd.step
from caopd.shared_prefix import shared_prefix_logits

if __name__ == "__main__":
    output_dir, forward = Path(sys.argv[1]), sys.argv[2]
    backbone = sys.argv[3] if len(sys.argv) > 3 else "sdft"
    chunked = (sys.argv[4] if len(sys.argv) > 4 else "chunked") == "chunked"
    shared_forwards = []

    def counted(*args, **kwargs):
        logits = shared_prefix_logits(*args, **kwargs)
        shared_forwards.append(logits is not None)
        return logits

    caopd.step.shared_prefix_logits = counted
    tokenizer = real_tokenizer()
    trainer = toy_trainer(
        tiny_model(tokenizer).float(), tokenizer, output_dir, per_device_train_batch_size=6,
        shared_prefix=forward == "shared", optim="sgd", learning_rate=1e-2, teacher_update_rate=0.0,
        backbone=backbone, **({"rl_reward": "rlcr"} if backbone == "grpo" else {"chunked_loss": chunked}),
    )  # fmt: skip
    trainer.train()
    trainer.save_model(str(output_dir / "model"))
    rank = trainer.accelerator.process_index
    (output_dir / f"shared_forwards_rank{rank}.json").write_text(json.dumps(shared_forwards))
    (output_dir / f"loss_chunking_rank{rank}.json").write_text(json.dumps(trainer.loss_chunking_mode()))
    trainer.accelerator.end_training()  # as main.py does: no process group left for exit-time destructors
    del trainer
    gc.collect()

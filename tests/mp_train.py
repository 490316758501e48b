"""Two-process training run for test_multiprocess.py (launched through torchrun as two gloo processes).

Three prompts x K=4 rollouts = 12 per step, 6 per process: the middle prompt's rollouts land on both.
"""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from helpers import toy_trainer
from tiny_model import real_tokenizer, tiny_model

if __name__ == "__main__":
    output_dir = Path(sys.argv[1])
    tokenizer = real_tokenizer()
    trainer = toy_trainer(tiny_model(tokenizer), tokenizer, output_dir, per_device_train_batch_size=6, max_steps=2)
    trainer.train()
    trainer.accelerator.end_training()  # as main.py does: no process group left for exit-time destructors

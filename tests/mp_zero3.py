"""A DeepSpeed ZeRO-3 run on CPU (two gloo processes, bf16 weights) for test_teacher_ema.py.

    accelerate launch --use_deepspeed --zero_stage 3 ... tests/mp_zero3.py MODEL OUT STEPS [RESUME or -] [BACKBONE]

Builds the config before the model, as main.py does (DeepSpeed's settings come from it), and saves a checkpoint
after every step.
"""

import gc
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch
from helpers import BACKBONES, TOY_TASK, toy_config, toy_dataset
from tiny_model import real_tokenizer
from transformers import AutoModelForCausalLM

if __name__ == "__main__":
    model_dir, output_dir, max_steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    resume = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
    backbone = sys.argv[5] if len(sys.argv) > 5 else "sdft"
    config = toy_config(
        output_dir,
        backbone,
        per_device_train_batch_size=4,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=1,
        bf16=True,  # DeepSpeed's bf16 mode; on a CPU the Trainer asks for use_cpu, which the toy config sets
        teacher_update_rate=0.01,
        lr_scheduler_type="constant",  # a resumed run with another max_steps keeps the same learning rates
    )
    tokenizer = real_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    trainer = BACKBONES[backbone][1](
        model=model, args=config, train_dataset=toy_dataset(), task=TOY_TASK, processing_class=tokenizer
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.accelerator.end_training()
    del trainer, model
    gc.collect()  # as main.py does: no DeepSpeed engine (and its process group) left for interpreter shutdown

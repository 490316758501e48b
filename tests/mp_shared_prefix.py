"""One SGD step under a sharded launch (DeepSpeed ZeRO-3 or FSDP, two gloo processes on CPU, fp32), with the
shared-prefix forward or without, for test_shared_prefix.py.

    accelerate launch <sharding flags> tests/mp_shared_prefix.py MODEL OUT shared|unshared BACKBONE CHECKPOINTING

CHECKPOINTING is off, non-reentrant or reentrant. Saves the trained weights to OUT/model and, per process, the run
config's ``shared_prefix`` value and how many forwards packed their prompts, to OUT/packed_rank<N>.json.
"""

import gc
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch
from helpers import BACKBONES, TOY_TASK, toy_config, toy_dataset
from tiny_model import real_tokenizer
from transformers import AutoModelForCausalLM

import caopd.shared_prefix

if __name__ == "__main__":
    model_dir, output_dir, forward, backbone, checkpointing = sys.argv[1:6]
    output_dir = Path(output_dir)
    packed, original_pack = [], caopd.shared_prefix.pack_rollouts

    def counted(*args, **kwargs):
        result = original_pack(*args, **kwargs)
        packed.append(result is not None)
        return result

    caopd.shared_prefix.pack_rollouts = counted
    settings = {"optim": "sgd", "learning_rate": 1e-2, "per_device_train_batch_size": 4, "max_prompt_length": 64}
    settings |= {"shared_prefix": forward == "shared", "gradient_checkpointing": checkpointing != "off"}
    if checkpointing != "off":
        settings["gradient_checkpointing_kwargs"] = {"use_reentrant": checkpointing == "reentrant"}
    if backbone != "grpo":
        settings["teacher_update_rate"] = 0.0
    config = toy_config(output_dir, backbone, **settings)  # before the model, as main.py does for DeepSpeed
    tokenizer = real_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    trainer = BACKBONES[backbone][1](
        model=model, args=config, train_dataset=toy_dataset(), task=TOY_TASK, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(output_dir / "model"))
    rank = trainer.accelerator.process_index
    record = {"mode": trainer.shared_prefix_mode(), "packed": packed}
    (output_dir / f"packed_rank{rank}.json").write_text(json.dumps(record))
    trainer.accelerator.end_training()
    del trainer, model
    gc.collect()

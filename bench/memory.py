"""Peak memory and loss time of one optimizer step against completion length, the chunked loss beside the whole
logits, and what it means at paper scale.

Each measurement runs in a fresh process: a tiny random Llama with the real SmolLM2 tokenizer (vocabulary 49,152,
hidden size 64), so that, as at paper scale, the completion's logits are the tensors that grow; CaOPD on the SDFT
backbone; the built-in arithmetic task; one question x K = 2 rollouts per step, one rollout per micro-batch (the
paper's micro-batch 1), generation forced to the full length, the same seed (so the same batches) in every process.
The peak resident memory of the step (Linux ``VmHWM``, reset at step begin through ``/proc/self/clear_refs``) minus
the memory before it is the step's memory. glibc is told to return large blocks to the system at once
(``MALLOC_MMAP_THRESHOLD_``), so the peak is the tensors', not the allocator's cache. The loss time is the step's
loss forward and backward (``compute_loss`` and the backward), without the sampling.

Printed: the step memory for completion lengths L, 2L and 4L, the growth ratios, the slope per completion token,
and the slope in "vocabulary rows" (tensors of one vocabulary row per token, in the model's dtype, alive at the
peak), chunked (``--chunked_loss``, the default) and whole (``--no-chunked_loss``); the loss-time ratio of the two.
The row count carries to other vocabularies, and with it the script estimates the large tensors of one step at the
paper's settings (Qwen3-8B and Qwen3-32B, bf16, ZeRO-3 over 8 GPUs, micro-batch 1, 2k-token prompt, 8k-token
completion) and says whether they fit 80 GB and 141 GB beside vLLM; docs/performance.md explains each row and says
which rows rest on the measurement and which on formulas.

    python bench/memory.py              # about 4 minutes on 2 CPU cores
    python bench/memory.py --length 128 # L = 128, 256, 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caopd.checks import positive_int
from caopd.user_errors import one_line_errors

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARMS = ("chunked", "whole")
MIB = 2**20
GIB = 2**30

# Qwen3 models (config.json of the hub releases) and the paper's run (Table 6 and scripts/paper_run.sh).
MODELS = {
    "Qwen3-8B": {"parameters": 8.19e9, "hidden": 4096, "layers": 36, "intermediate": 12288, "kv_heads": 8},
    "Qwen3-32B": {"parameters": 32.8e9, "hidden": 5120, "layers": 64, "intermediate": 25600, "kv_heads": 8},
}
PAPER = {
    "head_dim": 128, "vocab": 151_936, "gpus": 8, "prompt": 2048, "completion": 8192, "vllm_share": 0.3, "chunk": 1024,
}  # fmt: skip
GPUS_GIB = {"80 GB (H100)": 80, "141 GB (H200)": 141}


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(arm: str, length: int, dtype: str, chunk: int) -> dict[str, float]:
    """One optimizer step of ``arm`` with completions of ``length`` tokens; memory in this (fresh) process."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from caopd.cli import parse_args
    from caopd.models import embedded_model_path, tiny_random_model
    from caopd.tasks import get_task
    from distil_trainer import DistilTrainer
    from main import build_config

    flags = ["--dataset_name", "arithmetic", "--output_dir", f"/tmp/caopd_bench_memory_{arm}"]
    flags += ["--max_steps", "1", "--num_prompts_per_batch", "1", "--num_generations", "2", "--no_wandb"]
    flags += ["--per_device_train_batch_size", "1", "--max_completion_length", str(length), "--warmup_steps", "0"]
    flags += ["--max_prompt_length", "512", "--save_steps", str(10**9)]
    flags += ["--no-chunked_loss"] if arm == "whole" else ["--loss_chunk_size", str(chunk)]
    args = parse_args(flags)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path(), padding_side="left", truncation_side="left")
    model = tiny_random_model(tokenizer, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    model = model.to(getattr(torch, dtype))
    task = get_task("arithmetic")
    trainer = DistilTrainer(
        model=model, args=build_config(args, 1), train_dataset=task.load(None), task=task, processing_class=tokenizer
    )
    trainer.generation_config.min_new_tokens = trainer.generation_config.max_new_tokens  # no early EOS
    result: dict[str, float] = {}

    class PeakOfStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current size
            result["before_kib"] = _memory_kib("VmRSS")

        def on_step_end(self, args, state, control, **kwargs):
            result["peak_kib"] = _memory_kib("VmHWM")

    completion_lengths = []
    prepare = trainer._prepare_training_batch

    def prepare_and_measure(inputs):
        batch = prepare(inputs)
        completion_lengths.append(batch["completion_ids"].size(1))
        return batch

    trainer._prepare_training_batch = prepare_and_measure
    trainer.add_callback(PeakOfStep())
    loss_seconds = []
    for owner, name in ((trainer, "compute_loss"), (trainer.accelerator, "backward")):
        setattr(owner, name, _timed(getattr(owner, name), loss_seconds))
    trainer.train()
    return {
        "arm": arm,
        "length": length,
        "completion_tokens": completion_lengths[0],
        "step_mib": (result["peak_kib"] - result["before_kib"]) / 1024,
        "loss_s": sum(loss_seconds),
        "chunking": trainer.loss_chunking_mode(),
        "vocab": len(tokenizer),
        "element_bytes": torch.tensor([], dtype=getattr(torch, dtype)).element_size(),
    }


def _timed(function, seconds: list[float]):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    return timed


def run_measurement(arm: str, length: int, dtype: str, chunk: int) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    command = [sys.executable, __file__, "--dtype", dtype, "--measure", arm, str(length), str(chunk)]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if finished.returncode != 0:
        raise SystemExit(f"error: measuring {arm} at {length} tokens failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def paper_scale_rows(model: str, vocab_rows: float, chunk_rows: float) -> list[tuple[str, float, str]]:
    """(tensor, GiB per GPU, basis) for ``model`` at the paper's settings: ``vocab_rows`` is the measured vocabulary
    rows per completion token, ``chunk_rows`` the rows one loss chunk holds at once (0 for the whole loss)."""
    p, m = PAPER, MODELS[model]
    shard = m["parameters"] / p["gpus"]
    tokens = p["prompt"] + p["completion"]
    row = p["vocab"] * 2  # one bf16 vocabulary row
    layer_recompute = tokens * (2 * m["hidden"] + 2 * m["kv_heads"] * p["head_dim"] + 3 * m["intermediate"]) * 2
    logits = (max(vocab_rows, 0.0) * p["completion"] + chunk_rows) * row
    return [
        ("student weights, bf16, ZeRO-3 shard", shard * 2 / GIB, "formula"),
        ("gradients, bf16, ZeRO-3 shard", shard * 2 / GIB, "formula"),
        ("fp32 master weights + AdamW moments, shard", shard * 12 / GIB, "formula"),
        ("EMA teacher, bf16, ZeRO-3 shard", shard * 2 / GIB, "formula"),
        ("logits and loss temporaries (student + teacher)", logits / GIB, "measured rows"),
        ("checkpointed layer inputs (gradient checkpointing)", m["layers"] * tokens * m["hidden"] * 2 / GIB, "formula"),
        ("one layer's activations while it is recomputed", layer_recompute / GIB, "formula"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--length", type=positive_int, default=256, help="L: measure completions of L, 2L and 4L tokens"
    )
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="weights and logits (the paper: bf16)"
    )
    parser.add_argument("--measure", nargs=3, metavar=("ARM", "LENGTH", "CHUNK"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.measure:
        arm, length, chunk = options.measure
        print(json.dumps(measure(arm, int(length), options.dtype, int(chunk))))
        return 0
    if options.length < 16:
        parser.error(
            f"--length must be at least 16 tokens (the confidence line alone takes about 8), got {options.length}"
        )
    if not Path("/proc/self/clear_refs").exists():
        parser.error("this benchmark reads Linux's /proc/self/status and /proc/self/clear_refs")

    lengths = [options.length, 2 * options.length, 4 * options.length]
    chunk = options.length // 4  # a quarter of the shortest completion: every length runs several chunks
    results = {arm: [run_measurement(arm, length, options.dtype, chunk) for length in lengths] for arm in ARMS}
    vocab, element = results["chunked"][0]["vocab"], results["chunked"][0]["element_bytes"]
    print(
        f"\nPeak memory of one optimizer step above the memory before it "
        f"(CaOPD on SDFT, tiny Llama in {options.dtype}, vocabulary {vocab}, loss chunks of {chunk} tokens):"
    )
    print(f"{'loss':<8} {'L':>6} {'tokens':>7} {'step MiB':>9} {'x of L':>7} {'loss s':>7}")
    rows_per_token = {}
    for arm in ARMS:
        first = results[arm][0]["step_mib"]
        for entry in results[arm]:
            print(
                f"{arm:<8} {entry['length']:>6} {entry['completion_tokens']:>7} {entry['step_mib']:>9.1f}"
                f" {entry['step_mib'] / first:>7.2f} {entry['loss_s']:>7.3f}"
            )
        points = [(e["completion_tokens"], e["step_mib"] * MIB) for e in results[arm]]
        per_token = slope(points)
        rows_per_token[arm] = per_token / (vocab * element)
        print(
            f"{arm:<8} slope {per_token / 1024:.1f} KiB per completion token"
            f" = {rows_per_token[arm]:.2f} vocabulary rows of {element} bytes"
        )
    print(f"chunked: {results['chunked'][0]['chunking']}")
    longest = {arm: results[arm][-1] for arm in ARMS}
    print(
        f"\nChunked / whole at 4L: step memory {longest['chunked']['step_mib'] / longest['whole']['step_mib']:.3f}, "
        f"loss time {longest['chunked']['loss_s'] / longest['whole']['loss_s']:.3f}"
    )

    for model in MODELS:
        print(
            f"\nEstimated at the paper's settings ({model}, bf16, ZeRO-3 over 8 GPUs, micro-batch 1, 2k + 8k tokens):"
        )
        for arm in ARMS:
            # a chunk holds, for its tokens, what the whole loss holds for every token (an upper bound)
            chunk_rows = rows_per_token["whole"] * PAPER["chunk"] if arm == "chunked" else 0.0
            rows = paper_scale_rows(model, rows_per_token[arm], chunk_rows)
            total = sum(gib for _, gib, _ in rows)
            print(f"  {arm} loss:")
            for name, gib, basis in rows:
                print(f"    {name:<52} {gib:>6.1f} GiB  ({basis})")
            print(f"    {'sum (ZeRO-3 buffers and fragmentation not counted)':<52} {total:>6.1f} GiB")
            for gpu, size in GPUS_GIB.items():
                vllm = size * PAPER["vllm_share"]
                verdict = "fits" if total + vllm <= size else "does not fit"
                print(f"    with vLLM colocate at 0.3 of {gpu}: {total + vllm:.1f} GiB, {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

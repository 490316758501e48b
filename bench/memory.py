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

Printed: the step memory for completion lengths L, 2L and 4L (``--points``), the growth ratios, the slope per
completion token, and the slope in "vocabulary rows" (tensors of one vocabulary row per token, in the model's dtype,
alive at the peak), chunked (``--chunked_loss``, the default) and whole (``--no_chunked_loss``); the loss-time ratio
of the two.
On this model the LM head is nearly all of a step's matrix work, so the recomputation the chunked loss pays in the
backward weighs far more than at paper scale; the loss time is measured again, in fp32, on a timing model whose head
is Qwen3-8B's share of the work (8 %: hidden 512, untied, 93 layers; ``--proxy_layers`` changes the depth), with
gradient checkpointing on as in the paper's runs, chunked against whole in turn on one batch, in one process (the
median of ``--repeats`` turns; the arm that goes first alternates), in chunks of L/2 tokens. A
chunk's product for the head's weight gradient writes the whole [vocabulary x hidden] matrix whatever the chunk's
length, so chunks of a few dozen tokens are bound by memory traffic on this CPU; the default chunk, 1,024 tokens,
is far above that.

The row count carries to other vocabularies, and with it the script estimates the large tensors of one step at the
paper's settings (Qwen3-8B and Qwen3-32B, bf16, ZeRO-3 over 8 GPUs, micro-batch 1, 2k-token prompt, 8k-token
completion) and says whether they fit 80 GB and 141 GB beside vLLM; docs/performance.md explains each row and says
which rows rest on the measurement and which on formulas.

    python bench/memory.py              # about 10 minutes on 2 CPU cores
    python bench/memory.py --length 128 # L = 128, 256, 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

# The distillation loss chunked (the default) and on whole logits, both CaOPD on SDFT. (GRPO's log-probs come from
# TRL's fused LM head, whose tiles are bounded at 4,096 positions x 32,768 vocabulary columns: docs/performance.md.)
ARM_FLAGS = {"chunked": [], "whole": ["--no_chunked_loss"]}
ARMS = tuple(ARM_FLAGS)
MIB = 2**20
GIB = 2**30

# Qwen3 models (config.json of the hub releases) and the paper's run (Table 6 and scripts/paper_run.sh).
MODELS = {
    "Qwen3-8B": {"parameters": 8.19e9, "hidden": 4096, "layers": 36, "intermediate": 12288, "heads": 32, "kv_heads": 8},
    "Qwen3-32B": {
        "parameters": 32.8e9,
        "hidden": 5120,
        "layers": 64,
        "intermediate": 25600,
        "heads": 64,
        "kv_heads": 8,
    },
}
PAPER = {
    "head_dim": 128, "vocab": 151_936, "gpus": 8, "prompt": 2048, "completion": 8192, "vllm_share": 0.3, "chunk": 1024,
}  # fmt: skip
GPUS_GIB = {"80 GB (H100)": 80, "141 GB (H200)": 141}

# The memory model: the logits are the tensors that grow. The timing model: the LM head is, as in Qwen3-8B, about 8 %
# of the matrix work per token (untied, hidden 512, as many layers as it takes), so that the time the chunked loss
# spends recomputing the head weighs as it would there; on the memory model the head is nearly all of the work.
TINY = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
PROXY = {"hidden_size": 512, "intermediate_size": 1536, "num_attention_heads": 8, "num_key_value_heads": 2}
PROXY |= {"head_dim": 64, "tie_word_embeddings": False}


def head_share(model) -> float:
    """The LM head's share of the weights a token's forward multiplies by (embeddings, norms and biases aside)."""
    head = model.get_output_embeddings().weight.numel()
    body = sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() == 2 and "embed" not in name and "lm_head" not in name
    )
    return head / (head + body)


def paper_head_share(model: str) -> float:
    """``head_share`` of a Qwen3 release, from its config."""
    m, head_dim = MODELS[model], PAPER["head_dim"]
    attention = 2 * m["hidden"] * m["heads"] * head_dim + 2 * m["hidden"] * m["kv_heads"] * head_dim
    head = PAPER["vocab"] * m["hidden"]
    return head / (head + m["layers"] * (attention + 3 * m["hidden"] * m["intermediate"]))


def proxy_layers(share: float, vocab: int) -> int:
    """The timing model's layer count that puts its head at ``share`` of the matrix work."""
    hidden, inner = PROXY["hidden_size"], PROXY["intermediate_size"]
    width = PROXY["head_dim"] * (PROXY["num_attention_heads"] + PROXY["num_key_value_heads"])
    layer = 2 * hidden * width + 3 * hidden * inner
    return max(1, round(vocab * hidden * (1 - share) / share / layer))


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _trainer(flags: list[str], length: int, shape: dict, dtype: str):
    """CaOPD on SDFT over the arithmetic task, one question x K = 2 rollouts of exactly ``length`` tokens per step, one
    rollout per micro-batch, on a random model of ``shape`` with the real SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from caopd.cli import parse_args
    from caopd.models import embedded_model_path, tiny_random_model
    from caopd.tasks import get_task
    from distil_trainer import DistilTrainer
    from main import build_config

    common = ["--dataset_name", "arithmetic", "--output_dir", "/tmp/caopd_bench_memory", "--max_steps", "1"]
    common += ["--num_prompts_per_batch", "1", "--num_generations", "2", "--no_wandb", "--warmup_steps", "0"]
    common += ["--per_device_train_batch_size", "1", "--max_completion_length", str(length)]
    common += ["--max_prompt_length", "512", "--save_steps", str(10**9)]
    args = parse_args(common + flags)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path(), padding_side="left", truncation_side="left")
    model = tiny_random_model(tokenizer, **shape).to(getattr(torch, dtype))
    task = get_task("arithmetic")
    trainer = DistilTrainer(
        model=model, args=build_config(args, 1), train_dataset=task.load(None), task=task, processing_class=tokenizer
    )
    trainer.generation_config.min_new_tokens = trainer.generation_config.max_new_tokens  # no early EOS
    return trainer


def measure(arm: str, length: int, dtype: str, chunk: int) -> dict[str, float]:
    """One optimizer step of ``arm`` with completions of ``length`` tokens on the memory model; memory in this
    (fresh) process."""
    import torch
    from transformers import TrainerCallback

    trainer = _trainer(ARM_FLAGS[arm] + ["--loss_chunk_size", str(chunk)], length, TINY, dtype)
    result: dict[str, float] = {}

    class PeakOfStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current size
            result["before_kib"] = _memory_kib("VmRSS")

        def on_step_end(self, args, state, control, **kwargs):
            result["peak_kib"] = _memory_kib("VmHWM")

    batches = _captured_batches(trainer)
    trainer.add_callback(PeakOfStep())
    loss_seconds = []
    for owner, name in ((trainer, "compute_loss"), (trainer.accelerator, "backward")):
        setattr(owner, name, _timed(getattr(owner, name), loss_seconds))
    trainer.train()
    return {
        "arm": arm,
        "length": length,
        "completion_tokens": batches[0]["completion_ids"].size(1),
        "step_mib": (result["peak_kib"] - result["before_kib"]) / 1024,
        "loss_s": sum(loss_seconds),
        "head_share": head_share(trainer.model),
        "chunking": trainer.loss_chunking_mode(),
        "vocab": trainer.model.config.vocab_size,
        "element_bytes": torch.tensor([], dtype=getattr(torch, dtype)).element_size(),
    }


def time_on_one_batch(length: int, chunk: int, layers: int, repeats: int) -> dict:
    """The loss forward and backward, chunked and whole in turn, ``repeats`` times each on one batch of the timing
    model (fp32, ``PROXY`` with ``layers`` layers, gradient checkpointing on as in the paper's runs): after one
    training step, which samples the batch and warms up. The arm that goes first alternates from turn to turn."""
    flags = ["--loss_chunk_size", str(chunk), "--gradient_checkpointing"]
    trainer = _trainer(flags, length, {**PROXY, "num_hidden_layers": layers}, "float32")
    batches = _captured_batches(trainer)
    trainer.train()
    model, batch = trainer.model, batches[0]
    model.train()
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for turn in range(repeats):
        for arm in ARMS if turn % 2 == 0 else ARMS[::-1]:
            trainer.chunks_loss = arm == "chunked"
            started = time.perf_counter()
            trainer.compute_loss(model, batch).backward()
            seconds[arm].append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
    return {"seconds": seconds, "head_share": head_share(model), "completion_tokens": batch["completion_ids"].size(1)}


def _captured_batches(trainer) -> list[dict]:
    """The training batches ``trainer`` builds from now on (TRL's ``_prepare_training_batch``), as a list."""
    batches = []
    prepare = trainer._prepare_training_batch

    def prepare_and_keep(inputs):
        batches.append(prepare(inputs))
        return batches[-1]

    trainer._prepare_training_batch = prepare_and_keep
    return batches


def _timed(function, seconds: list[float]):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    return timed


def _in_fresh_process(*argv: str, env: dict[str, str] | None = None) -> dict:
    """This script with ``argv`` (a hidden measuring mode) in a fresh process: the JSON it prints last."""
    env = {**os.environ, **(env or {})}
    finished = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    if finished.returncode != 0:
        raise SystemExit(f"error: measuring ({' '.join(argv)}) failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def run_measurement(arm: str, length: int, dtype: str, chunk: int) -> dict[str, float]:
    """``measure`` in a fresh process whose glibc returns large blocks to the system at once, so that the peak is
    the tensors' (the timing runs without this: each large allocation would then be a fresh mapping)."""
    unpooled = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    return _in_fresh_process("--dtype", dtype, "--measure", arm, str(length), str(chunk), env=unpooled)


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
        "--length", type=positive_int, default=256, help="L: measure completions of L, 2L, 4L, ... tokens"
    )
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="weights and logits (the paper: bf16)"
    )
    parser.add_argument(
        "--proxy_layers", type=positive_int, default=None,
        help="layers of the timing model (default: as many as put its LM head at Qwen3-8B's share of the work)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=positive_int, default=4, help="timed turns of each loss on the timing model")
    parser.add_argument(
        "--points", type=positive_int, default=3, help="completion lengths measured: L, 2L, 4L, ... (at least 2)"
    )
    parser.add_argument("--measure", nargs=3, metavar=("ARM", "LENGTH", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument("--time", nargs=3, type=int, metavar=("LENGTH", "CHUNK", "LAYERS"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.measure:
        arm, length, chunk = options.measure
        print(json.dumps(measure(arm, int(length), options.dtype, int(chunk))))
        return 0
    if options.time:
        print(json.dumps(time_on_one_batch(*options.time, options.repeats)))
        return 0
    if options.length < 16:
        parser.error(
            f"--length must be at least 16 tokens (the confidence line alone takes about 8), got {options.length}"
        )
    if options.points < 2:
        parser.error(f"--points must be at least 2 (the slope needs two lengths), got {options.points}")
    if not Path("/proc/self/clear_refs").exists():
        parser.error("this benchmark reads Linux's /proc/self/status and /proc/self/clear_refs")

    lengths = [options.length * 2**point for point in range(options.points)]
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
    memory_ratio = longest["chunked"]["step_mib"] / longest["whole"]["step_mib"]
    print(
        f"\nChunked / whole at {lengths[-1]} tokens: step memory {memory_ratio:.3f}, "
        f"loss time {longest['chunked']['loss_s'] / longest['whole']['loss_s']:.3f} "
        f"(the LM head is {longest['whole']['head_share']:.0%} of this model's matrix work)"
    )
    target = paper_head_share("Qwen3-8B")
    layers = options.proxy_layers or proxy_layers(target, vocab)
    halves = max(1, options.length // 2)  # two chunks per completion: see the docstring
    timed = _in_fresh_process(
        "--time", str(options.length), str(halves), str(layers), "--repeats", str(options.repeats)
    )
    median = {arm: statistics.median(timed["seconds"][arm]) for arm in ARMS}
    turns = ", ".join(f"{c / w:.3f}" for c, w in zip(*timed["seconds"].values(), strict=True))
    print(
        f"\nLoss time with the LM head at {timed['head_share']:.1%} of the matrix work (Qwen3-8B: {target:.1%}, "
        f"Qwen3-32B: {paper_head_share('Qwen3-32B'):.1%}; fp32, hidden {PROXY['hidden_size']}, {layers} layers, "
        f"untied, gradient checkpointing, {timed['completion_tokens']} completion tokens in chunks of {halves}; "
        f"chunked and whole in turn on one batch, {options.repeats} turns each, the first arm alternating):"
    )
    print(
        f"  median chunked {median['chunked']:.3f} s, whole {median['whole']:.3f} s, "
        f"chunked / whole {median['chunked'] / median['whole']:.3f} (per turn: {turns})"
    )

    for model in MODELS:
        print(
            f"\nEstimated at the paper's settings ({model}, bf16, ZeRO-3 over 8 GPUs, micro-batch 1, 2k + 8k tokens):"
        )
        for arm in ("chunked", "whole"):
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

"""Shared-prefix forward against TRL's: the student and teacher forward/backward of one micro-batch, timed and
measured on this machine, with gradient checkpointing off and on.

The part of a step that ``caopd.shared_prefix`` changes is the student forward (with gradients), its backward and
the teacher forward (no gradients); rollouts and the CaOPD rewrite are untouched. For each shape and checkpointing
setting, one process per path (shared, unshared) builds the embedded SmolLM2-135M-Instruct in fp32 (sdpa
attention), renders real prompts with the chat template, appends random completion tokens (their content does not
change the compute), and times the student forward + a reverse-KL loss against the teacher + backward, and the
teacher forward on the prompt plus the task's golden demonstration (the privileged context). Checkpointing is
transformers' (as ``--gradient_checkpointing`` turns it on through the Trainer). Peak memory is the process's
resident high-water mark during the timed steps, over what it held before (Linux /proc/self/status).

Shapes: (a) the CPU demo's arithmetic: 2 questions x K = 8 rollouts, 40-token completions, micro-batches of 8;
(b) tool use: a prompt of the shared tool-use set, 1 question x K = 8, 100-token completions; (c) science: a prompt
of the shared science set (SciKnowEval chemistry MCQ), 2 questions x K = 8, 64-token completions. Rows come from
``--data_dir`` (``../shared/data/caopd_eval``). ``--quick`` runs the same measurement on a tiny random Llama with the
embedded model's tokenizer (seconds, for tests; its times say nothing about the real model's).

    python bench/prefix.py --repeats 1       # about 25 minutes on 2 CPU cores
    python bench/prefix.py --quick           # about a minute
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

SHAPES = {
    "arithmetic": {"questions": 2, "k": 8, "completion": 40, "micro_batch": 8},
    "tooluse": {"questions": 1, "k": 8, "completion": 100, "micro_batch": 8},
    "science": {"questions": 2, "k": 8, "completion": 64, "micro_batch": 8},
}
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "caopd_eval"


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _rows(shape: str, data_dir: str, questions: int) -> list[tuple[list[dict], str]]:
    """(prompt messages, demonstration) of the first ``questions`` rows of the task."""
    from caopd.tasks import get_task

    task = get_task(shape)
    rows = task.load(None if shape == "arithmetic" else str(Path(data_dir) / f"{shape}_eval"))
    return [(rows[i]["prompt"], rows[i]["demonstration"]) for i in range(questions)]


def _batch(tokenizer, rows, k: int, completion: int, seed: int):
    """Student and teacher inputs of K rollouts per question: left-padded prompts, random completions."""
    import torch

    from caopd.prompts import encode_chat_prompts

    generator = torch.Generator().manual_seed(seed)
    prompts = encode_chat_prompts(tokenizer, [messages for messages, _ in rows], False)
    demonstrations = [tokenizer(demo, add_special_tokens=False)["input_ids"] for _, demo in rows]
    teachers = [ids + demo for ids, demo in zip(prompts, demonstrations, strict=True)]

    def padded(sequences, completions):
        width = max(map(len, sequences))
        ids = [[tokenizer.pad_token_id] * (width - len(s)) + s for s in sequences for _ in range(k)]
        mask = [[0] * (width - len(s)) + [1] * len(s) for s in sequences for _ in range(k)]
        ids = torch.cat([torch.tensor(ids), completions], dim=1)
        return ids, torch.cat([torch.tensor(mask), torch.ones_like(completions)], dim=1)

    completions = torch.randint(100, len(tokenizer) - 100, (len(rows) * k, completion), generator=generator)
    return padded(prompts, completions), padded(teachers, completions)


def _model(tokenizer, quick: bool):
    """The embedded SmolLM2-135M-Instruct in fp32, or (``quick``) a tiny random Llama with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from caopd.models import embedded_model_path, tiny_random_model

    if quick:
        return tiny_random_model(tokenizer, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    return AutoModelForCausalLM.from_pretrained(embedded_model_path(), dtype=torch.float32)


def measure(shape: str, shared: bool, checkpointing: bool, data_dir: str, repeats: int, quick: bool = False) -> dict:
    """Time and peak memory of the student and teacher forward/backward, in this (fresh) process."""
    import torch
    from transformers import AutoTokenizer

    from caopd.models import embedded_model_path
    from caopd.shared_prefix import enable_shared_prefix, shared_prefix_logits

    settings = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path(), padding_side="left")
    model = _model(tokenizer, quick)
    model.set_attn_implementation("sdpa")
    if checkpointing:
        model.gradient_checkpointing_enable()
    if shared:
        enable_shared_prefix(model)
    model.train()
    (student_ids, student_mask), (teacher_ids, teacher_mask) = _batch(
        tokenizer, _rows(shape, data_dir, settings["questions"]), settings["k"], settings["completion"], 0
    )
    keep, micro = settings["completion"], settings["micro_batch"]

    def logits(ids, mask):
        if shared:
            result = shared_prefix_logits(model, ids, mask, keep)
            assert result is not None, "no prompt shared in the micro-batch"
            return result
        return model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep + 1).logits[:, :-1]

    def step() -> float:
        model.zero_grad(set_to_none=True)
        losses = []
        for start in range(0, student_ids.size(0), micro):
            rows = slice(start, start + micro)
            with torch.no_grad():
                teacher = torch.log_softmax(logits(teacher_ids[rows], teacher_mask[rows]), -1)
            student = torch.log_softmax(logits(student_ids[rows], student_mask[rows]), -1)
            loss = (student.exp() * (student - teacher)).sum(-1).mean()  # reverse KL over the completion tokens
            loss.backward()
            losses.append(loss.item())
        return sum(losses) / len(losses)

    step()  # warm-up
    Path("/proc/self/clear_refs").write_text("5")
    before = _memory_kib("VmRSS")
    times, losses = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - started)
    return {
        "shape": shape,
        "shared": shared,
        "checkpointing": checkpointing,
        "seconds": min(times),
        "peak_mib": (_memory_kib("VmHWM") - before) / 1024,
        "loss": losses[-1],
        "prompt_tokens": int(student_mask[:, :-keep].sum()),
        "rows": student_ids.size(0),
    }


def run_measurement(shape: str, shared: bool, checkpointing: bool, data_dir: str, repeats: int, quick: bool) -> dict:
    command = [sys.executable, __file__, "--measure", shape, str(int(shared)), str(int(checkpointing))]
    command += ["--repeats", str(repeats), "--data_dir", data_dir] + (["--quick"] if quick else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if finished.returncode != 0:
        raise SystemExit(f"error: measuring {shape} (shared={shared}) failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA), help="folder of tooluse_eval/ and science_eval/")
    parser.add_argument("--repeats", type=positive_int, default=2, help="timed steps per path (the fastest counts)")
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    parser.add_argument(
        "--checkpointing", nargs="+", choices=("off", "on"), default=["off", "on"], help="gradient checkpointing"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny random model instead of SmolLM2 (tests)")
    parser.add_argument("--measure", nargs=3, metavar=("SHAPE", "SHARED", "CHECKPOINTING"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.measure:
        shape, shared, checkpointing = options.measure
        result = measure(shape, shared == "1", checkpointing == "1", options.data_dir, options.repeats, options.quick)
        print(json.dumps(result))
        return 0
    for shape in options.shapes:
        if shape != "arithmetic" and not (Path(options.data_dir) / f"{shape}_eval").exists():
            parser.error(f"--data_dir {options.data_dir} has no {shape}_eval/ (the shared sets, ../shared/data)")
    print(
        "| shape | checkpointing | rows x prompt tokens | unshared s | shared s | time ratio | unshared MiB "
        "| shared MiB | memory ratio | loss (unshared / shared) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in options.shapes:
        for checkpointing in options.checkpointing:
            on = checkpointing == "on"
            unshared, shared = (
                run_measurement(shape, flag, on, options.data_dir, options.repeats, options.quick) for flag in (0, 1)
            )
            tokens = unshared["prompt_tokens"] / unshared["rows"]
            print(
                f"| {shape} | {checkpointing} | {unshared['rows']} x {tokens:.0f} "
                f"| {unshared['seconds']:.2f} | {shared['seconds']:.2f} "
                f"| {shared['seconds'] / unshared['seconds']:.3f} | {unshared['peak_mib']:.0f} "
                f"| {shared['peak_mib']:.0f} | {shared['peak_mib'] / unshared['peak_mib']:.2f} "
                f"| {unshared['loss']:.5f} / {shared['loss']:.5f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

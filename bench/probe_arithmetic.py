"""Probe how the embedded model does on the arithmetic task: is per-question P_acc spread over 0..1?

CaOPD needs questions the model solves *sometimes*: P_acc (share of correct answers among K samples at
temperature 1.0) is the training target, and a task where it is always 0 or always 1 teaches nothing. This script
samples K completions per question the way the trainer does (temperature 1.0, no top-k/top-p), verifies them with
the task's verifier and prints per-level accuracy, the P_acc histogram, how often a ``Confidence: <number>`` line
is present and the mean verbalized confidence.

Speed: every prompt is prefilled once and its KV cache repeated K times, instead of prefilling K copies (the
few-shot prompt is ~360 tokens, so this is most of the cost on CPU). ``--timing_prompts N`` additionally times one
plain ``generate(num_return_sequences=K)`` call on N prompts, which is what a training step pays.

    python bench/probe_arithmetic.py --n 48 --k 8 --max_new_tokens 40
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caopd.checks import non_negative_int, positive_int
from caopd.confidence import parse_confidence
from caopd.generation import generate_with_shared_prefill
from caopd.models import resolve_model_name
from caopd.tasks.arithmetic import LEVELS, generate_questions, verify_arithmetic
from caopd.user_errors import one_line_errors


def sample_completions(model, tokenizer, prompts: list, k: int, max_new_tokens: int) -> list[str]:
    """K completions per prompt (grouped by prompt), sampled at temperature 1.0 with one prefill per prompt."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    options = {**_sampling(tokenizer, max_new_tokens), "num_return_sequences": k}
    output = generate_with_shared_prefill(model, encoded.input_ids, encoded.attention_mask, options)
    return tokenizer.batch_decode(output[:, encoded.input_ids.shape[1] :], skip_special_tokens=True)


def _sampling(tokenizer, max_new_tokens: int) -> dict:
    """The trainer's sampling settings (TRL's defaults): temperature 1.0, no top-k or top-p truncation."""
    return {
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
    }


def time_plain_generate(model, tokenizer, prompts: list, k: int, max_new_tokens: int) -> tuple[float, int]:
    """Seconds and prompt length (tokens) of one plain K-sample generate call on ``prompts``, as a trainer does."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**encoded, num_return_sequences=k, **_sampling(tokenizer, max_new_tokens))
    return time.perf_counter() - start, encoded.input_ids.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=48, help="questions")
    parser.add_argument("--k", type=positive_int, default=8, help="samples per question")
    parser.add_argument("--max_new_tokens", type=positive_int, default=40)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--split", default="train")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts_per_call", type=positive_int, default=8, help="questions per generate call")
    parser.add_argument(
        "--timing_prompts", type=non_negative_int, default=0, help="also time a plain K-sample call on N prompts"
    )
    parser.add_argument(
        "--show", type=non_negative_int, default=0, help="print the first completion of this many questions"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    path = resolve_model_name(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    data = generate_questions(args.n, seed=args.seed, split=args.split)

    completions: list[str] = []
    start = time.perf_counter()
    for first in range(0, len(data), args.prompts_per_call):
        prompts = data["prompt"][first : first + args.prompts_per_call]
        completions += sample_completions(model, tokenizer, prompts, args.k, args.max_new_tokens)
    sampling_s = time.perf_counter() - start

    per_level: dict[str, list[float]] = defaultdict(list)  # level -> P_acc of each of its questions
    confidences: list[float | None] = []
    answer_lines = 0
    for index, row in enumerate(data):
        group = completions[index * args.k : (index + 1) * args.k]
        correct = sum(verify_arithmetic(text, int(row["ground_truth"])) for text in group)
        per_level[row["difficulty"]].append(correct / args.k)
        answer_lines += sum("answer:" in text.lower() for text in group)
        confidences += [parse_confidence(text) for text in group]

    print(f"{len(data)} {args.split} questions x K={args.k}, temperature 1.0, max_new_tokens={args.max_new_tokens}")
    print(f"{'level':<10} {'questions':>9} {'accuracy':>9}  P_acc per question")
    all_pacc: list[float] = []
    for level in LEVELS:
        paccs = per_level.get(level.name, [])
        all_pacc += paccs
        if paccs:
            shown = " ".join(f"{p:.2f}" for p in sorted(paccs))
            print(f"{level.name:<10} {len(paccs):>9} {sum(paccs) / len(paccs):>9.3f}  {shown}")
    print(f"{'all':<10} {len(all_pacc):>9} {sum(all_pacc) / len(all_pacc):>9.3f}")

    print(f"\nP_acc histogram (correct of {args.k}):")
    for correct in range(args.k + 1):
        count = sum(round(p * args.k) == correct for p in all_pacc)
        print(f"  {correct}/{args.k}: {count:>3} {'#' * count}")
    strictly_between = sum(0 < p < 1 for p in all_pacc)
    print(f"  strictly between 0 and 1: {strictly_between}/{len(all_pacc)}")

    total = len(completions)
    valid = [c for c in confidences if c is not None]
    print(f"\ncompletions: {total}")
    print(f"  with an 'Answer:' line:                 {answer_lines / total:.3f}")
    print(f"  with a parsable 'Confidence: <number>': {len(valid) / total:.3f}")
    if valid:
        print(f"  mean confidence, parsable ones:         {sum(valid) / len(valid):.3f}")
    print(f"  mean confidence, missing as 0:          {sum(valid) / total:.3f}")
    lengths = [len(tokenizer(text, add_special_tokens=False).input_ids) for text in completions]
    hit_limit = sum(length >= args.max_new_tokens for length in lengths)
    print(f"  completion tokens: mean {sum(lengths) / total:.1f}, at the limit {hit_limit / total:.3f}")
    print(f"\nsampling (one prefill per prompt): {sampling_s:.1f} s, load average {os.getloadavg()[0]:.2f}")

    if args.timing_prompts:
        prompts = data["prompt"][: args.timing_prompts]
        seconds, prompt_tokens = time_plain_generate(model, tokenizer, prompts, args.k, args.max_new_tokens)
        print(
            f"plain generate, {len(prompts)} prompts x K={args.k} ({prompt_tokens} prompt tokens, "
            f"{args.max_new_tokens} new): {seconds:.1f} s, load average {os.getloadavg()[0]:.2f}"
        )
    for text in completions[:: args.k][: args.show]:
        print(repr(text))


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

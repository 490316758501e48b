"""The evaluation command behind eval_tooluse.py, eval_science.py and eval_arithmetic.py.

Prompts come from the training loaders, so the model is asked exactly as it was trained (confidence
instruction included unless ``--no_confidence_instruction``); responses are judged by the training
verifier and the shared confidence parser. Outputs, each written atomically: ``inference.json`` (one item
per sample), ``metrics.json`` and ``reliability.png``.

The arithmetic task needs no files: by default it is evaluated on generated questions of its ``test`` split,
which never share a question with the training split (membership is fixed by a hash of the question).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from datasets import Dataset

from caopd.atomic import write_text_atomically
from caopd.confidence import parse_confidence
from caopd.generation import Sampling, generate
from caopd.metrics import calibration_metrics
from caopd.models import ModelResolutionError, resolve_model_name
from caopd.plots import reliability_diagram
from caopd.tasks import Task, TaskDataError, get_task
from caopd.tasks.arithmetic import SPLITS, generate_questions
from caopd.verifiers import extract_choice

DEFAULT_DATA = {"tooluse": "data/tooluse/test", "science": "data/science/test", "arithmetic": None}


def build_parser(task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"Generate on a checkpoint and measure accuracy and calibration ({task}).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model_path", required=True, help="checkpoint folder, hub id, or 'smollm2' (embedded)")
    data_help = "evaluation rows in the task's training format"
    if task == "arithmetic":
        data_help += " (default: generated questions, see --split/--num_questions)"
    parser.add_argument("--data", default=DEFAULT_DATA[task], help=data_help)
    if task == "arithmetic":
        parser.add_argument("--split", choices=SPLITS, default="test", help="split of the generated questions")
        parser.add_argument("--num_questions", type=int, default=200, help="generated questions to evaluate")
        parser.add_argument("--question_seed", type=int, default=0, help="seed of the question draw")
    parser.add_argument("--output_dir", default=None, help="default: <model_path>/eval_<task> (or eval_<task>/)")
    parser.add_argument("--num_samples", type=int, default=1, help="responses per question")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (the original evaluation)")
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8, help="questions per generate() call")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--n_bins", type=int, default=10)
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no_confidence_instruction", action="store_true", help="ask without the confidence line (ablation)"
    )
    return parser


def _validate(args: argparse.Namespace) -> None:
    for name in ("num_samples", "max_new_tokens", "batch_size", "n_bins"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ValueError("--temperature must be >= 0 and --top_p in (0, 1]")
    if args.task == "arithmetic" and args.no_confidence_instruction:
        raise ValueError(
            "arithmetic: the worked examples carry confidence lines, so --no_confidence_instruction is not supported"
        )
    if args.data is not None and not Path(args.data).exists():
        raise ValueError(f"--data {args.data}: not found (e.g. ../shared/data/caopd_eval/{args.task}_eval)")


def golden_for_output(task: str, ground_truth: Any) -> Any:
    """The inference file's golden format: tool calls as they are; science as ``[{"Answer": letter}]``."""
    return [{"Answer": ground_truth}] if task == "science" else ground_truth


def evaluate(task_name: str, argv: list[str] | None = None) -> int:
    args = build_parser(task_name).parse_args(argv)
    args.task = task_name
    try:
        _validate(args)
        task = get_task(task_name)
        rows = _load_rows(task, args)
        if args.limit is not None:
            rows = rows.select(range(min(args.limit, len(rows))))
        model_path = resolve_model_name(args.model_path)
        sampling = Sampling(
            args.num_samples, args.temperature, args.top_p, args.max_new_tokens, args.batch_size, args.seed
        )
        responses = generate(model_path, list(rows["prompt"]), sampling, args.backend)
    except (ValueError, TaskDataError, ModelResolutionError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    items = []
    for item_id, (row, samples) in enumerate(zip(rows, responses, strict=True)):
        truth = json.loads(row["ground_truth"])
        for sample_index, response in enumerate(samples):
            confidence = parse_confidence(response)
            items.append(
                {
                    "item_id": item_id,
                    "sample_index": sample_index,
                    "prompt": row["prompt"],
                    "response": response,
                    "golden_answer": golden_for_output(task_name, truth),
                    "correct": task.verify_fn(response, truth),
                    "confidence": confidence,
                    "format_ok": confidence is not None,
                }
            )
    metrics = calibration_metrics(
        [i["correct"] for i in items], [i["confidence"] for i in items], args.n_bins, args.n_bootstrap, args.seed
    )
    if task_name == "science":
        metrics["answer_parse_rate"] = sum(extract_choice(i["response"]) is not None for i in items) / len(items)
    metrics["settings"] = {key: value for key, value in vars(args).items()}
    output = Path(args.output_dir or _default_output(args.model_path, model_path, task_name))
    write_text_atomically(output / "inference.json", json.dumps(items, indent=1, ensure_ascii=False) + "\n")
    write_text_atomically(output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    reliability_diagram({args.model_path: metrics}, output / "reliability.png", title=f"{task_name}: reliability")
    print(
        f"{task_name}: accuracy {metrics['accuracy']:.3f}  ECE {metrics['ece']:.3f}  Brier {metrics['brier_score']:.3f}"
        f"  SPR {metrics['spr']:.3f}  OCG {metrics['overconfidence_gap']:+.3f}  -> {output}"
    )
    return 0


def _load_rows(task: Task, args: argparse.Namespace) -> Dataset:
    """The evaluation rows: a file in the task's format, or (arithmetic without --data) generated questions."""
    if task.name != "arithmetic":
        return task.load(args.data, confidence_instruction=not args.no_confidence_instruction)
    if args.data is not None:
        return task.load(args.data)
    if args.num_questions < 1:
        raise ValueError(f"--num_questions must be a positive integer, got {args.num_questions}")
    return generate_questions(args.num_questions, seed=args.question_seed, split=args.split)


def _default_output(requested: str, resolved: str, task: str) -> str:
    """Beside a local checkpoint; under ./eval_<task>/<name> for hub ids and the embedded model."""
    if os.path.isdir(requested):
        return os.path.join(requested, f"eval_{task}")
    return os.path.join(f"eval_{task}", Path(resolved).name)

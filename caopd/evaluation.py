"""The evaluation command behind eval_tooluse.py, eval_science.py, eval_arithmetic.py and eval_custom.py.

Prompts come from the training loaders, so the model is asked exactly as it was trained (confidence
instruction included unless ``--no_confidence_instruction``); responses are judged by the training
verifier and the shared confidence parser. Outputs, each written atomically: ``inference.json`` (one item
per sample), ``metrics.json``, ``reliability.png`` and ``selective.png`` (accuracy against coverage).

The arithmetic task needs no files: by default it is evaluated on generated questions of its ``test`` split,
which never share a question with the training split (membership is fixed by a hash of the question).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoTokenizer

from caopd.atomic import output_folder_problem, write_set_atomically
from caopd.checkpoints import checkpoint_step
from caopd.checks import finite_float, non_negative_int, positive_int
from caopd.confidence import CONFIDENCE_READINGS, DEFAULT_READING, READING_HELP, read_confidence, reading_summary
from caopd.generation import MODEL_SETTABLE, generate, resolve_sampling
from caopd.metrics import calibration_metrics
from caopd.models import ModelResolutionError, resolve_model_name
from caopd.plots import reliability_png, selective_png
from caopd.prompt_lengths import OVERLONG_CHOICES, encode_within_limit
from caopd.run_guard import ignore_further_interrupts, signal_handlers_kept
from caopd.tasks import Task, TaskDataError, get_task
from caopd.tasks.arithmetic import SPLITS, generate_questions
from caopd.tasks.custom import VERIFIER_HELP
from caopd.verifiers import TOOLUSE_MATCHES, extract_choice

DEFAULT_DATA = {"tooluse": "data/tooluse/test", "science": "data/science/test", "arithmetic": None, "custom": None}


def build_parser(task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"Generate on a checkpoint and measure accuracy and calibration ({task}).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model_path", required=True, help="checkpoint folder, hub id, or 'smollm2' (embedded)")
    data_help = "evaluation rows in the task's training format"
    if task == "arithmetic":
        data_help += " (default: generated questions, see --split/--num_questions)"
    if task == "custom":
        data_help = "your evaluation rows: the same format (and the same --verifier) as the training data"
        parser.add_argument("--verifier", required=True, help="exactly as in training (" + VERIFIER_HELP + ")")
    parser.add_argument("--data", default=DEFAULT_DATA[task], required=task == "custom", help=data_help)
    if task in ("tooluse", "custom"):
        parser.add_argument(
            "--tooluse_match",
            choices=TOOLUSE_MATCHES,
            default="sequence",
            help="tool-use rule: every call in order (sequence), the first call (first_call: the original's P_acc "
            "and calibration script), or tool names + merged inputs (merged: the original's accuracy script)",
        )
    if task == "arithmetic":
        parser.add_argument("--split", choices=SPLITS, default="test", help="split of the generated questions")
        parser.add_argument("--num_questions", type=positive_int, default=200, help="generated questions to evaluate")
        parser.add_argument("--question_seed", type=non_negative_int, default=0, help="seed of the question draw")
    parser.add_argument("--output_dir", default=None, help="default: <model_path>/eval_<task> (or eval_<task>/)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the results an earlier evaluation left in --output_dir"
    )
    sampling = parser.add_argument_group(
        "sampling (defaults: the paper's validation setting; the same settings reach either --backend, and "
        "metrics.json records them with their source)"
    )
    sampling.add_argument(
        "--num_samples",
        type=positive_int,
        default=None,
        help="responses per question (default 8, as the paper; greedy: 1)",
    )
    sampling.add_argument(
        "--temperature", type=finite_float, default=0.6, help="in [0, 2]; 0 = greedy, one response per question"
    )
    sampling.add_argument("--top_p", type=finite_float, default=0.95)
    for name, kind, meaning in (
        ("top_k", int, "0 = off"),
        ("min_p", float, "0 = off"),
        ("repetition_penalty", float, "1 = off"),
    ):
        sampling.add_argument(
            f"--{name}",
            type=kind,
            default=None,
            help=f"default: the model's generation_config.json, else off ({meaning})",
        )
    sampling.add_argument(
        "--max_new_tokens",
        type=positive_int,
        default=8192,
        help="response limit (the paper: 8,192; a CPU wants far fewer)",
    )
    sampling.add_argument(
        "--enable_thinking", action="store_true", help="Qwen3's thinking mode on (the paper: off; as in training)"
    )
    parser.add_argument("--batch_size", type=positive_int, default=8, help="questions per generate() call")
    parser.add_argument(
        "--max_prompt_length",
        type=positive_int,
        default=None,
        help="prompt limit in tokens (default: none, whole prompts)",
    )
    parser.add_argument(
        "--overlong_prompts",
        choices=OVERLONG_CHOICES,
        default="error",
        help="prompts longer than --max_prompt_length: stop (error), leave out (drop) or cut from the left (truncate)",
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--n_bins", type=positive_int, default=10)
    parser.add_argument("--confidence_reading", choices=CONFIDENCE_READINGS, default=DEFAULT_READING, help=READING_HELP)
    parser.add_argument("--n_bootstrap", type=non_negative_int, default=1000)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--no_confidence_instruction", action="store_true", help="ask without the confidence line (ablation)"
    )
    return parser


def _validate(args: argparse.Namespace) -> None:
    for name in ("max_new_tokens", "batch_size", "n_bins"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.max_prompt_length is not None and args.max_prompt_length < 1:
        raise ValueError(f"--max_prompt_length must be a positive integer, got {args.max_prompt_length}")
    if args.n_bootstrap < 0:
        raise ValueError(f"--n_bootstrap must be 0 (no intervals) or more, got {args.n_bootstrap}")
    if getattr(args, "num_questions", 1) < 1:
        raise ValueError(f"--num_questions must be a positive integer, got {args.num_questions}")
    if args.output_dir is not None and Path(args.output_dir).is_file():
        raise ValueError(f"--output_dir {args.output_dir} is a file; give a folder")
    inside = args.output_dir is not None and _inside_a_checkpoint(Path(args.output_dir))
    if inside:
        raise ValueError(
            f"--output_dir {args.output_dir} lies inside the training checkpoint {inside}, which the run deletes when "
            "it keeps only its newest checkpoints; write the results beside it"
        )
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num_samples must be a positive integer, got {args.num_samples}")
    if args.task == "arithmetic" and args.no_confidence_instruction:
        raise ValueError(
            "arithmetic: the worked examples carry confidence lines, so --no_confidence_instruction is not supported"
        )
    if args.data is not None and not Path(args.data).exists():
        raise ValueError(f"--data {args.data}: not found (e.g. ../shared/data/caopd_eval/{args.task}_eval)")


def golden_for_output(task: str, ground_truth: Any) -> Any:
    """The inference file's golden format: tool calls as they are; science as ``[{"Answer": letter}]``."""
    return [{"Answer": ground_truth}] if task == "science" else ground_truth


def parse_evaluation_args(task_name: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The evaluation flags of ``task_name``, checked (``ValueError`` names the flag to fix)."""
    args = build_parser(task_name).parse_args(argv)
    args.task = task_name
    _validate(args)
    return args


def evaluate(task_name: str, argv: list[str] | None = None) -> int:
    """Evaluate as the flags say; bad input ends in one error line and Ctrl-C in one stop line."""
    with signal_handlers_kept():
        return _evaluate_and_report(task_name, argv)


def _evaluate_and_report(task_name: str, argv: list[str] | None) -> int:
    try:
        args = parse_evaluation_args(task_name, argv)
        task = get_task(task_name, getattr(args, "verifier", None), getattr(args, "tooluse_match", "sequence"))
        rows = _load_rows(task, args)
        if args.limit is not None:
            rows = rows.select(range(min(args.limit, len(rows))))
        task.probe(rows)
        model_path = resolve_model_name(args.model_path)
        output = Path(args.output_dir or _default_output(args.model_path, model_path, task_name))
        _refuse_earlier_results(output, args.overwrite)
        requested = {name: getattr(args, name) for name in ("num_samples", *MODEL_SETTABLE)}
        sampling, sources = resolve_sampling(requested, model_path, args.max_new_tokens, args.batch_size, args.seed)
        rows, prompt_ids = _encoded_prompts(rows, model_path, args)
        responses = generate(model_path, prompt_ids, sampling, args.backend)
        items = judged_items(task, rows, responses, args.confidence_reading)
        metrics = _metrics(task_name, args, items, sampling, sources)
        _write_results(output, task_name, args.model_path, items, metrics)
    except (ValueError, TaskDataError, ModelResolutionError, OSError) as err:
        print(f"error: {_user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ignore_further_interrupts()
        print("stopped by Ctrl-C; no result was written or replaced: run the same command again", file=sys.stderr)
        return 130
    print(
        f"{task_name}: accuracy {metrics['accuracy']:.3f}  ECE {metrics['ece']:.3f}  Brier {metrics['brier_score']:.3f}"
        f"  SPR {metrics['spr']:.3f}  OCG {metrics['overconfidence_gap']:+.3f}  -> {output}"
    )
    return 0


def _metrics(task_name: str, args: argparse.Namespace, items: list[dict], sampling, sources: dict) -> dict[str, Any]:
    metrics = calibration_metrics(
        [i["correct"] for i in items], [i["confidence"] for i in items], args.n_bins, args.n_bootstrap, args.seed
    )
    metrics |= reading_summary([i["confidence_out_of_range"] for i in items], args.confidence_reading)
    metrics["task"] = task_name
    metrics["length_cut_share"] = sum(i["cut_by_length"] for i in items) / len(items)
    if hasattr(args, "tooluse_match"):
        metrics["tooluse_match"] = args.tooluse_match
    if task_name == "science":
        metrics["answer_parse_rate"] = sum(extract_choice(i["response"]) is not None for i in items) / len(items)
    metrics["settings"] = {key: value for key, value in vars(args).items()}
    metrics["sampling"] = {**asdict(sampling), "stop_token_ids": list(sampling.stop_token_ids), "sources": sources}
    return metrics


def _write_results(output: Path, task_name: str, label: str, items: list[dict], metrics: dict) -> None:
    """The four result files as one set: all written to temporaries first, then renamed into place together."""
    texts = {
        "inference.json": json.dumps(items, indent=1, ensure_ascii=False) + "\n",
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
    }
    images = {
        "reliability.png": reliability_png({label: metrics}, title=f"{task_name}: reliability"),
        "selective.png": selective_png({label: metrics}, title=f"{task_name}: selective prediction"),
    }
    outputs = {output / name: (lambda stream, text=text: stream.write(text), "w") for name, text in texts.items()}
    outputs |= {
        output / name: (lambda stream, image=image: stream.write(image), "wb") for name, image in images.items()
    }
    write_set_atomically(outputs)


def _user_message(err: Exception) -> str:
    """The error as one line; a full disk says so and what to do."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({err.strerror}); no result was replaced: free some space and run again"
    return str(err)


RESULT_FILES = ("inference.json", "metrics.json")


def _refuse_earlier_results(output: Path, overwrite: bool) -> None:
    """An evaluation's results (hours of generation at paper lengths) are never replaced unasked."""
    problem = output_folder_problem(output, "--output_dir")
    if problem:
        raise ValueError(problem)
    earlier = [name for name in RESULT_FILES if (output / name).exists()]
    if earlier and not overwrite:
        raise ValueError(
            f"--output_dir {output} already holds results ({', '.join(earlier)}); choose another --output_dir "
            "or pass --overwrite to replace them"
        )


def judged_items(task: Task, rows: Dataset, responses: list, reading: str) -> list[dict[str, Any]]:
    """One item per sample: the response, its verdict by the training verifier and its confidence as ``reading``
    reads it (``confidence_out_of_range``: the number as written lies outside [0, 1])."""
    items = []
    for item_id, (row, samples) in enumerate(zip(rows, responses, strict=True)):
        truth = json.loads(row["ground_truth"])
        for sample_index, response in enumerate(samples):
            stated = read_confidence(response.text, reading)
            items.append(
                {
                    "item_id": item_id,
                    "sample_index": sample_index,
                    "prompt": row["prompt"],
                    "response": response.text,
                    "golden_answer": golden_for_output(task.name, truth),
                    "correct": task.verify_fn(response.text, truth),
                    "confidence": stated.value,
                    "confidence_out_of_range": stated.out_of_range,
                    "format_ok": stated.value is not None,
                    "cut_by_length": response.cut_by_length,
                }
            )
    return items


def _encoded_prompts(rows: Dataset, model_path: str, args: argparse.Namespace) -> tuple[Dataset, list[list[int]]]:
    """The prompts as token ids, rendered as in training, after the length check (``--overlong_prompts``)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    keep, prompt_ids, warning = encode_within_limit(
        tokenizer, list(rows["prompt"]), args.enable_thinking, args.max_prompt_length, args.overlong_prompts
    )
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return rows.select(keep), prompt_ids


def _load_rows(task: Task, args: argparse.Namespace) -> Dataset:
    """The evaluation rows: a file in the task's format, or (arithmetic without --data) generated questions."""
    if task.name != "arithmetic":
        return task.load(args.data, confidence_instruction=not args.no_confidence_instruction)
    if args.data is not None:
        return task.load(args.data)
    return generate_questions(args.num_questions, seed=args.question_seed, split=args.split)


def _default_output(requested: str, resolved: str, task: str) -> str:
    """In a local model folder (``<model>/eval_<task>``), beside a training checkpoint (``checkpoint-N`` folders are
    deleted as a run rotates them: ``eval_<task>_checkpoint-N`` next to it); under ./eval_<task>/<name> for hub ids
    and the embedded model."""
    folder = Path(requested)
    if folder.is_dir():
        if _inside_a_checkpoint(folder):
            return str(folder.parent / f"eval_{task}_{folder.name}")
        return os.path.join(requested, f"eval_{task}")
    return os.path.join(f"eval_{task}", Path(resolved).name)


def _inside_a_checkpoint(path: Path) -> str | None:
    """The training checkpoint folder (``checkpoint-N``) that ``path`` is or lies in, or None."""
    for part in (path.resolve(), *path.resolve().parents):
        if checkpoint_step(part) is not None:
            return str(part)
    return None

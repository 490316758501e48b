"""SciKnowEval (Chemistry, level L3, multiple choice) -> science train / validation / test sets.

    python data/prepare_science.py --input sciknoweval_chemistry.jsonl --output data/science

The raw file is SciKnowEval's JSON Lines export (``hicai-zju/SciKnowEval`` on the Hugging Face Hub, the
Chemistry files): rows with ``question``, ``choices`` (``{"label": [...], "text": [...]}``), ``answerKey``,
``type`` (``mcq-4-choices`` ...), ``domain`` and ``details.level``. Rows of other domains, levels or types
are skipped. Each kept row becomes: ``prompt`` = [system message with the answer format, user message with
the question and lettered options], ``answer`` = the letter, ``golden_response`` = a demonstration. The
split is 75/5/20, shuffled with ``--seed``; each split is written with ``save_to_disk`` to OUTPUT/<split>.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import Dataset

from caopd.atomic import check_replaceable_dataset, save_dataset_atomically
from caopd.checks import non_negative_int
from caopd.tasks.science import demonstration_for

SYSTEM_PROMPT = (
    "\nGiven a question and four options, please select the right answer. Respond in the following format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
    "For the answer, only output the letter corresponding to the correct option (A, B, C, or D), and nothing "
    'else. Do not restate the answer text. For example, if the answer is "A", just output:\n'
    "<answer>\nA\n</answer>\n"
)
SPLITS = (("train", 0.75), ("validation", 0.05), ("test", 0.20))
WHERE_TO_GET = (
    "download SciKnowEval's Chemistry data (Hugging Face dataset hicai-zju/SciKnowEval) as JSON Lines and pass "
    "it with --input"
)


def convert_row(raw: dict[str, Any], domain: str, level: str) -> dict[str, Any] | None:
    """The training row for one raw row, or None when it is not a lettered multiple-choice row we want."""
    details = raw.get("details") or {}
    if str(raw.get("domain", domain)).lower() != domain.lower() or str(details.get("level", level)) != level:
        return None
    if not str(raw.get("type", "mcq")).startswith("mcq"):
        return None
    choices = raw.get("choices") or {}
    labels, texts = choices.get("label") or [], choices.get("text") or []
    answer = str(raw.get("answerKey", "")).strip().upper()
    if not raw.get("question") or len(labels) != len(texts) or len(labels) < 2 or answer not in labels:
        return None
    options = "\n".join(f"{label}: {text}" for label, text in zip(labels, texts, strict=True))
    return {
        "prompt": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{str(raw['question']).strip()}\n\n{options}"},
        ],
        "answer": answer,
        "golden_response": demonstration_for(answer),
    }


def split_rows(rows: list[dict[str, Any]], seed: int) -> dict[str, list[dict[str, Any]]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    train_end = round(len(rows) * SPLITS[0][1])
    validation_end = train_end + round(len(rows) * SPLITS[1][1])
    bounds = {"train": (0, train_end), "validation": (train_end, validation_end), "test": (validation_end, len(rows))}
    return {name: [rows[i] for i in order[start:end]] for name, (start, end) in bounds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert SciKnowEval Chemistry L3 MCQ rows to CaOPD science sets.")
    parser.add_argument("--input", required=True, help="SciKnowEval JSON Lines file")
    parser.add_argument("--output", required=True, help="folder; train/, validation/ and test/ are written in it")
    parser.add_argument("--domain", default="Chemistry")
    parser.add_argument("--level", default="L3")
    parser.add_argument("--seed", type=non_negative_int, default=42)
    args = parser.parse_args(argv)
    source = Path(args.input)
    if not source.is_file():
        print(f"error: --input {source} not found: {WHERE_TO_GET}", file=sys.stderr)
        return 2
    rows, unreadable = [], 0
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            unreadable += 1
            continue
        row = convert_row(raw, args.domain, args.level) if isinstance(raw, dict) else None
        if row is not None:
            rows.append(row)
    if unreadable:
        print(f"warning: {unreadable} line(s) are not JSON and were skipped", file=sys.stderr)
    if not rows:
        print(f"error: no {args.domain} {args.level} multiple-choice rows in {source}", file=sys.stderr)
        return 2
    output = Path(args.output)
    splits = split_rows(rows, args.seed)
    if empty := [name for name, split in splits.items() if not split]:
        print(
            f"error: {len(rows)} usable row(s) leave the {', '.join(empty)} split(s) empty (75/5/20 split); "
            "give more rows (20 or more)",
            file=sys.stderr,
        )
        return 2
    try:
        for name in splits:  # all three checked before any is written
            check_replaceable_dataset(output / name)
        for name, split in splits.items():
            save_dataset_atomically(Dataset.from_list(split), output / name)
            print(f"{name}: {len(split)} rows -> {output / name}")
    except OSError as err:  # taken, under a file, not writable, or the disk filled
        print(f"error: --output {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

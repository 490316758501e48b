"""ToolAlpaca raw JSON -> the CaOPD/SDFT tool-use training format, saved with ``datasets.save_to_disk``.

    python data/prepare_tooluse.py --input train_data.json --output data/tooluse/train

One row per instruction: ``prompt`` (the ReAct prompt with tool name, description, documentation, the format
lines and the ``Begin!`` anchor), ``name``, ``description``, ``nl_documentation``, ``instruction``,
``golden_answer`` (list of ``{Action, Action_Input}``) and ``golden_response`` (a demonstration, written from
the golden calls when the raw record has none). Rows whose golden Action_Input is not valid JSON are
reported with their API and index and left out (``--keep_invalid`` keeps them, flagged ``golden_valid=False``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import Dataset

from caopd.atomic import save_dataset_atomically
from caopd.tasks.tooluse import demonstration_from_calls
from caopd.verifiers import tooluse_golden_problem

PROMPT_TEMPLATE = (
    "Your task is to answer the user's question using available tools. \n"
    "You have access to the following tools:\n"
    "Name: {name}\nDescription: {description}\nDocumentation:\n{documentation}\n\n"
    "Use the following format:\n"
    "Thought: you should always think about what to do\n"
    "Action: the action to take, should be one of the tool names.\n"
    "Action Input: the input to the action, must be in JSON format. All of the action input must be realistic "
    "and from the user.\n\n"
    "Begin!\nQuestion: {instruction}"
)


def react_prompt(name: str, description: str, documentation: str, instruction: str) -> str:
    return PROMPT_TEMPLATE.format(
        name=name, description=description, documentation=documentation.rstrip("\n"), instruction=instruction
    )


def convert(records: list[dict[str, Any]], keep_invalid: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Training rows and the problems found (one line each, naming the API and the instruction index)."""
    rows, problems = [], []
    for api_index, record in enumerate(records):
        name = str(record.get("Name", f"api{api_index}"))
        instructions = record.get("Instructions") or []
        answers = record.get("Golden_Answers") or []
        if len(instructions) != len(answers):
            problems.append(f"{name}: {len(instructions)} instructions but {len(answers)} golden answers; skipped")
            continue
        for index, (instruction, golden) in enumerate(zip(instructions, answers, strict=True)):
            calls = [
                {"Action": str(step.get("Action", "")), "Action_Input": str(step.get("Action_Input", ""))}
                for step in (golden if isinstance(golden, list) else [])
                if isinstance(step, dict)
            ]
            problem = tooluse_golden_problem(golden) or (None if calls else "no golden call")
            if problem:
                problems.append(f"{name} instruction {index}: {problem}")
                if not keep_invalid:
                    continue
            documentation = str(record.get("NLDocumentation", ""))
            row = {
                "prompt": react_prompt(name, str(record.get("Description", "")), documentation, str(instruction)),
                "name": name,
                "description": str(record.get("Description", "")),
                "nl_documentation": documentation,
                "instruction": str(instruction),
                "golden_answer": calls,
                "golden_response": demonstration_from_calls(calls) if calls else "",
            }
            if keep_invalid:
                row["golden_valid"] = problem is None
            rows.append(row)
    return rows, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert ToolAlpaca raw JSON to the CaOPD tool-use training format.")
    parser.add_argument("--input", required=True, help="ToolAlpaca JSON (train_data.json or eval_simulated.json)")
    parser.add_argument("--output", required=True, help="folder for datasets.save_to_disk")
    parser.add_argument("--keep_invalid", action="store_true", help="keep rows with invalid golden JSON, flagged")
    args = parser.parse_args(argv)
    try:
        records = json.loads(Path(args.input).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: --input {args.input}: cannot read ToolAlpaca JSON ({err})", file=sys.stderr)
        return 2
    if not isinstance(records, list):
        print(f"error: --input {args.input}: expected a JSON list of API records", file=sys.stderr)
        return 2
    rows, problems = convert(records, args.keep_invalid)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not rows:
        print("error: no usable rows", file=sys.stderr)
        return 2
    output = Path(args.output)
    save_dataset_atomically(Dataset.from_list(rows), output)
    print(f"{len(rows)} rows -> {output} ({len(problems)} problem(s) reported)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

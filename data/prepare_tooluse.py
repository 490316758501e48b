"""ToolAlpaca raw JSON -> the CaOPD/SDFT tool-use training format, saved with ``datasets.save_to_disk``.

    python data/prepare_tooluse.py --input train_data.json --output data/tooluse/train

ToolAlpaca ships two formats, and a file may hold either (the format is read per API record):

- evaluation files (``eval_simulated.json``, ``eval_real.json``): ``Instructions`` with ``Golden_Answers`` (lists of
  ``{Action, Action_Input}``); the demonstration is written from the golden calls;
- the training file (``train_data.json``): ``Instances``, each with ``input`` (the instruction), ``output``,
  ``Final Thought`` and ``intermediate_steps``, a list of ``[[action, action_input, "Thought: ...\nAction: ...\nAction
  Input: ..."], observation]``. The golden calls are the steps' actions and inputs, and the demonstration is the
  steps' own thought/action text, joined by newlines. Observations and the final answer are left out: the student
  sees no tool output, so it must plan every call, and the verifier judges the calls.

One row per instruction: ``prompt`` (the ReAct prompt with tool name, description, documentation, the format
lines and the ``Begin!`` anchor), ``name``, ``description``, ``nl_documentation``, ``instruction``,
``golden_answer`` (list of ``{Action, Action_Input}``) and ``golden_response`` (the demonstration). Problems (a
golden Action_Input that is not valid JSON, an instance without tool calls, a malformed record or step) are
reported with their API and index, and those rows left out; ``--keep_invalid`` keeps rows whose only problem is
invalid golden JSON, flagged ``golden_valid=False``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import Dataset

from caopd.atomic import check_replaceable_dataset, save_dataset_atomically
from caopd.tasks.tooluse import demonstration_from_calls
from caopd.verifiers import tooluse_golden_problem, verify_tooluse

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
        if not isinstance(record, dict):
            problems.append(f"record {api_index}: not a JSON object; skipped")
            continue
        name = str(record.get("Name", f"api{api_index}"))
        if "Instances" in record:
            examples = _training_examples(record, name, problems)
        else:
            examples = _evaluation_examples(record, name, problems)
        for index, instruction, golden, demonstration in examples:
            calls = [
                {"Action": str(step.get("Action", "")), "Action_Input": str(step.get("Action_Input", ""))}
                for step in (golden if isinstance(golden, list) else [])
                if isinstance(step, dict)
            ]
            problem = tooluse_golden_problem(golden) or (None if calls else "no golden call")
            if problem:
                problems.append(f"{name} instruction {index}: {problem}")
                if not keep_invalid or not calls:
                    continue
            if demonstration is not None and not verify_tooluse(demonstration, calls):
                problems.append(
                    f"{name} instruction {index}: the steps' text does not state their calls; the demonstration is "
                    "written from the calls instead"
                )
                demonstration = None
            documentation = str(record.get("NLDocumentation", ""))
            row = {
                "prompt": react_prompt(name, str(record.get("Description", "")), documentation, str(instruction)),
                "name": name,
                "description": str(record.get("Description", "")),
                "nl_documentation": documentation,
                "instruction": str(instruction),
                "golden_answer": calls,
                "golden_response": demonstration or demonstration_from_calls(calls),
            }
            if keep_invalid:
                row["golden_valid"] = problem is None
            rows.append(row)
    return rows, problems


Example = tuple[int, str, Any, "str | None"]  # index, instruction, golden calls, demonstration (None: write one)


def _listed(record: dict[str, Any], key: str, name: str, problems: list[str]) -> list | None:
    """``record[key]`` when it is a list (missing: empty); None, with a problem reported, when it is not."""
    value = record.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{name}: '{key}' is {type(value).__name__}, not a list; skipped")
        return None
    return value


def _evaluation_examples(record: dict[str, Any], name: str, problems: list[str]) -> list[Example]:
    instructions = _listed(record, "Instructions", name, problems)
    answers = _listed(record, "Golden_Answers", name, problems)
    if instructions is None or answers is None:
        return []
    if len(instructions) != len(answers):
        problems.append(f"{name}: {len(instructions)} instructions but {len(answers)} golden answers; skipped")
        return []
    pairs = zip(instructions, answers, strict=True)
    examples = []
    for index, (instruction, golden) in enumerate(pairs):
        if not isinstance(instruction, str) or not instruction.strip():
            problems.append(f"{name} instruction {index}: not text; skipped")
            continue
        examples.append((index, instruction, golden, None))
    return examples


def _training_examples(record: dict[str, Any], name: str, problems: list[str]) -> list[Example]:
    instances = record.get("Instances")
    if not isinstance(instances, list):
        problems.append(f"{name}: 'Instances' is not a list; skipped")
        return []
    instructions = _listed(record, "Instructions", name, problems) or []
    examples = []
    for index, instance in enumerate(instances):
        steps = instance.get("intermediate_steps") if isinstance(instance, dict) else None
        instruction = instance.get("input") if isinstance(instance, dict) else None
        if instruction is None and index < len(instructions):
            instruction = instructions[index]
        if not isinstance(steps, list) or not isinstance(instruction, str) or not instruction.strip():
            problems.append(f"{name} instruction {index}: needs 'input' text and an 'intermediate_steps' list")
            continue
        parsed = [_step(step) for step in steps]
        if any(step is None for step in parsed):
            problems.append(f"{name} instruction {index}: a step is not [[action, input, text], observation]")
            continue
        golden = [{"Action": action, "Action_Input": action_input} for action, action_input, _ in parsed]
        examples.append((index, instruction, golden, "\n".join(text.strip() for _, _, text in parsed) or None))
    return examples


def _step(step: Any) -> tuple[str, str, str] | None:
    """(action, action input, the step's thought/action text) of one intermediate step, or None if malformed."""
    if not isinstance(step, list) or not step or not isinstance(step[0], list) or len(step[0]) < 3:
        return None
    action, action_input, text = step[0][:3]
    if not all(isinstance(value, str) for value in (action, action_input, text)):
        return None
    return action.strip(), action_input, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert ToolAlpaca raw JSON to the CaOPD tool-use training format.")
    parser.add_argument("--input", required=True, help="ToolAlpaca JSON (train_data.json or eval_simulated.json)")
    parser.add_argument("--output", required=True, help="folder for datasets.save_to_disk")
    parser.add_argument("--keep_invalid", action="store_true", help="keep rows with invalid golden JSON, flagged")
    args = parser.parse_args(argv)
    output = Path(args.output)
    try:
        check_replaceable_dataset(output)  # before the input is read: a wrong --output fails at once
    except OSError as err:
        print(f"error: --output {err}", file=sys.stderr)
        return 2
    try:
        records = json.loads(Path(args.input).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, RecursionError) as err:
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
    try:
        save_dataset_atomically(Dataset.from_list(rows), output)
    except OSError as err:  # taken since the check, or the disk filled
        print(f"error: --output {err}", file=sys.stderr)
        return 2
    print(f"{len(rows)} rows -> {output} ({len(problems)} problem(s) reported)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

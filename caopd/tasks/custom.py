"""Your own task: a question/answer dataset plus a verifier chosen by name or given as ``module:function``.

Rows (JSON, JSONL or a ``save_to_disk`` folder): ``question`` (text or chat messages; ``prompt`` is accepted
too), ``answer`` (text or number), optionally ``demonstration``. The generic confidence instruction is
appended to the question. Built-in verifiers compare the response's *final answer*: the text after its last
``Answer:`` label when it has one, else the whole response, without its confidence statement.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import regex
from datasets import Dataset

from caopd.confidence import last_match
from caopd.prompts import ANSWER_CONFIDENCE_INSTRUCTION, append_confidence_instruction
from caopd.targets import strip_confidence
from caopd.tasks.base import Task, TaskDataError, Verifier, canonical_dataset, read_rows, user_chat
from caopd.verifiers import extract_choice, tool_call_key, verify_mcq, verify_tooluse

_ANSWER_LABEL = re.compile(r"^[ \t*_#>]{0,8}(?:final )?answer[ \t*_]{0,4}:", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"[-+]?\d{1,30}(?:[.,]\d{1,30})?(?:[eE][-+]?\d{1,3})?")
VERIFIER_HELP = "exact_match, numeric, mcq_letter, regex:PATTERN, tooluse, or module:function"
# Seconds per call of a user's module:function verifier: one that hangs stops the run here (CAOPD_VERIFIER_TIMEOUT_S).
VERIFIER_TIMEOUT_ENV = "CAOPD_VERIFIER_TIMEOUT_S"
DEFAULT_VERIFIER_TIMEOUT_S = 30.0
REGEX_TIMEOUT_S = 2.0  # per response: a pattern that backtracks catastrophically on long output stops here
AnswerKey = Callable[[str], Hashable | None]
Equivalence = Callable[[str, str], bool]


def final_answer(response: str) -> str:
    """The text after the last ``Answer:`` label (or the whole response), without the confidence statement."""
    body = strip_confidence(response)
    label = last_match(_ANSWER_LABEL, body)
    return (body[label.end() :] if label else body).strip()


def _normalize(text: Any) -> str:
    return " ".join(str(text).strip().strip(".").casefold().split())


def exact_match(response: str, answer: Any) -> bool:
    return _normalize(final_answer(response)) == _normalize(answer)


def numeric(response: str, answer: Any) -> bool:
    """The last number of the final answer equals the reference within 1e-6 (relative)."""
    found = last_match(_NUMBER, final_answer(response))
    try:
        value, reference = float(found.group(0).replace(",", "")), float(answer)
    except (AttributeError, TypeError, ValueError):
        return False
    return abs(value - reference) <= 1e-6 * max(1.0, abs(reference))


def _regex_key(pattern: str, flag: str = "--verifier") -> AnswerKey:
    """The normalized text of the last match of ``pattern`` (its group 1 when it has groups).

    Patterns run under the ``regex`` module with a time limit per response, so a pattern that backtracks
    catastrophically on a long model output stops the run with a message instead of hanging it.
    """
    try:
        compiled = regex.compile(pattern, regex.MULTILINE)
    except regex.error as err:
        raise TaskDataError(f"{flag} regex:{pattern}: not a valid regular expression ({err})") from err

    def key(response: str) -> str | None:
        found = None
        try:
            for found in compiled.finditer(response, timeout=REGEX_TIMEOUT_S):  # noqa: B007 - keeps the last
                pass
        except TimeoutError as err:
            raise TaskDataError(
                f"{flag} regex:{pattern}: took over {REGEX_TIMEOUT_S:g} s on a {len(response):,}-character response "
                "(catastrophic backtracking); rewrite it without nested repetition such as (a+)+ or (a|aa)+"
            ) from err
        if found is None:
            return None
        return _normalize(found.group(1) if compiled.groups else found.group(0))

    return key


def _regex_verifier(pattern: str) -> Verifier:
    key = _regex_key(pattern)
    return lambda response, answer: (extracted := key(response)) is not None and extracted == _normalize(answer)


def final_answer_key(response: str) -> str | None:
    """The normalized final answer (None when empty): ``exact_match``'s reading of a response."""
    return _normalize(final_answer(response)) or None


def number_key(response: str) -> float | None:
    """The last number of the final answer: ``numeric``'s reading of a response (rounded to 9 significant digits)."""
    found = last_match(_NUMBER, final_answer(response))
    try:
        return float(f"{float(found.group(0).replace(',', '')):.9g}")
    except (AttributeError, ValueError):
        return None


BUILT_IN: dict[str, Verifier] = {
    "exact_match": exact_match,
    "numeric": numeric,
    "mcq_letter": verify_mcq,
    "tooluse": verify_tooluse,
}
# How each built-in verifier reads a response's answer; self-consistency compares two responses by it.
ANSWER_KEYS: dict[str, AnswerKey] = {
    "exact_match": final_answer_key,
    "numeric": number_key,
    "mcq_letter": extract_choice,
    "tooluse": tool_call_key,
}


def resolve_verifier(spec: str, flag: str = "--verifier") -> Verifier:
    """A verifier from its name, ``regex:PATTERN`` (group 1 or the whole match), or ``module:function``."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    if spec.startswith("regex:"):
        return _regex_verifier(spec[len("regex:") :])
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise TaskDataError(f"{flag} {spec!r}: choose one of {VERIFIER_HELP}")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        raise TaskDataError(f"{flag} {spec}: cannot import it ({err}); is the module on PYTHONPATH?") from err
    except Exception as err:
        raise TaskDataError(f"{flag} {spec}: importing {module_name} failed ({type(err).__name__}: {err})") from err
    if not callable(function):
        raise TaskDataError(f"{flag} {spec}: {function_name} is not callable")
    return _checked(function, spec, flag)


class _VerifierTimeout(BaseException):
    """Raised into a verifier that overran its time (a BaseException, so its own ``except Exception`` lets it by)."""


class _VerifierExit(BaseException):
    """Raised in place of ``os._exit`` inside a verifier: ending the process would leave no model and a stale lock."""


@contextmanager
def _guarded_call(seconds: float) -> Iterator[None]:
    """A verifier call under a time limit (SIGALRM; only in the main thread, where signals arrive) and with
    ``os._exit`` turned into an exception."""
    hard_exit = os._exit

    def refuse_exit(code: int) -> None:
        raise _VerifierExit(code)

    os._exit = refuse_exit
    timed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if timed:

        def expire(_signum, _frame) -> None:
            raise _VerifierTimeout

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        os._exit = hard_exit
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def verifier_timeout() -> float:
    """The time limit of one verifier call: ``CAOPD_VERIFIER_TIMEOUT_S`` seconds, 30 by default."""
    value = os.environ.get(VERIFIER_TIMEOUT_ENV)
    try:
        seconds = DEFAULT_VERIFIER_TIMEOUT_S if value is None else float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise TaskDataError(f"{VERIFIER_TIMEOUT_ENV}={value!r}: give a positive number of seconds")
    return seconds


def _checked(function: Callable[[str, Any], Any], spec: str, flag: str) -> Verifier:
    """Your function, made to fail in one clear line: when it raises, exits, overruns ``verifier_timeout()`` or
    returns something other than a bool."""

    def verify(response: str, answer: Any) -> bool:
        seconds = verifier_timeout()
        try:
            with _guarded_call(seconds):
                verdict = function(response, answer)
        except _VerifierTimeout as err:
            raise TaskDataError(
                f"{flag} {spec} took over {seconds:g} s on one response (starting {response[:60]!r}); a verifier is "
                f"called for every rollout and must return promptly: make it faster (or raise {VERIFIER_TIMEOUT_ENV})"
            ) from err
        except (SystemExit, _VerifierExit) as err:
            raise TaskDataError(
                f"{flag} {spec} tried to end the process (exit code {err.args[0] if err.args else None}); a verifier "
                "must return True or False"
            ) from err
        except Exception as err:
            raise TaskDataError(
                f"{flag} {spec} raised {type(err).__name__}: {err} (response starting {response[:60]!r}); "
                "it must return True or False for any text, also one without an answer"
            ) from err
        if not isinstance(verdict, (bool, np.bool_)):
            raise TaskDataError(
                f"{flag} {spec} returned {verdict!r} ({type(verdict).__name__}); it must return True or False"
            )
        return bool(verdict)

    return verify


def load_custom(path: str | None, confidence_instruction: bool = True) -> Dataset:
    if path is None:
        raise TaskDataError("--dataset_name custom needs --train_data PATH (JSON, JSONL or a save_to_disk folder)")
    rows = read_rows(path)
    question_column = "question" if "question" in rows.column_names else "prompt"
    for column in (question_column, "answer"):
        if column not in rows.column_names:
            raise TaskDataError(
                f"{path} lacks column '{column}' (it has: {', '.join(rows.column_names)}); own-task rows need "
                "'question' (text or chat messages) and 'answer', optionally 'demonstration'"
            )
    _warn_of_conflicting_answers(rows[question_column], rows["answer"], path)
    prompts, demonstrations, answers = [], [], []
    for index, row in enumerate(rows):
        question, answer = row[question_column], row["answer"]
        if isinstance(question, str):
            if not question.strip():
                raise TaskDataError(f"{path} row {index}: empty question")
            messages = user_chat(question)
        elif isinstance(question, list) and question and all(_is_message(m) for m in question):
            messages = question
        else:
            raise TaskDataError(
                f"{path} row {index}: 'question' must be text or a list of chat messages "
                '({"role": "user", "content": "..."}, role and content as text)'
            )
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise TaskDataError(f"{path} row {index}: empty answer")
        if not isinstance(answer, (str, int, float, list, dict)):
            raise TaskDataError(f"{path} row {index}: 'answer' must be text, a number or JSON")
        try:
            if confidence_instruction:
                messages = append_confidence_instruction(messages, ANSWER_CONFIDENCE_INSTRUCTION)
        except ValueError as err:
            raise TaskDataError(f"{path} row {index}: {err}") from err
        demonstration = row.get("demonstration") if "demonstration" in rows.column_names else None
        if demonstration is not None and not isinstance(demonstration, str):
            raise TaskDataError(f"{path} row {index}: 'demonstration' must be text, got {type(demonstration).__name__}")
        prompts.append(messages)
        demonstrations.append(demonstration or f"Answer: {answer if isinstance(answer, str) else json.dumps(answer)}")
        answers.append(answer)
    rows_out = canonical_dataset(prompts, demonstrations, answers)
    if "feedback" in rows.column_names:  # environment feedback for SDPO's --include_environment_feedback
        feedback = [value if isinstance(value, str) else None for value in rows["feedback"]]
        rows_out = rows_out.add_column("feedback", feedback)
    return rows_out


def _warn_of_conflicting_answers(questions: list, answers: list, path: str) -> None:
    """One warning line when the same question comes with different answers: legal, but the verifier then marks
    one of them wrong, and P_acc of that question is halved by the data, not the model."""
    seen: dict[str, str] = {}
    conflicting = set()
    for question, answer in zip(questions, answers, strict=True):
        key, value = json.dumps(question, sort_keys=True), json.dumps(answer, sort_keys=True)
        if seen.setdefault(key, value) != value:
            conflicting.add(key)
    if conflicting:
        example = json.loads(next(iter(sorted(conflicting))))
        print(
            f"warning: {path}: {len(conflicting)} question(s) appear with different answers "
            f"(e.g. {str(example)[:60]!r}); each rollout is judged against its own row's answer",
            file=sys.stderr,
        )


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str)
        and bool(message["content"].strip())
    )


def custom_task(verifier: str, tooluse_match: str = "sequence") -> Task:
    if verifier == "tooluse":
        verify, key = partial(verify_tooluse, match=tooluse_match), partial(tool_call_key, match=tooluse_match)
        return Task("custom", verify, load_custom, description=f"tooluse ({tooluse_match})", answer_key=key)
    verify = resolve_verifier(verifier)
    return Task("custom", verify, load_custom, description=verifier, answer_key=_answer_key(verifier))


def _answer_key(spec: str, flag: str = "--verifier") -> AnswerKey | None:
    """How the verifier ``spec`` reads an answer: built-ins and regexes; None for a user's ``module:function``."""
    if spec in ANSWER_KEYS:
        return ANSWER_KEYS[spec]
    if spec.startswith("regex:"):
        return _regex_key(spec[len("regex:") :], flag)
    return None


def _equal_keys(key: AnswerKey, response: str, reference: str) -> bool:
    answer = key(response)
    return answer is not None and answer == key(reference)


def resolve_equivalence(spec: str, task: Task) -> Equivalence:
    """How self-consistency compares a rollout with its reference.

    ``task`` (the default): the task's own reading of an answer agrees (the MCQ letter, the tool-call sequence, the
    arithmetic result; a custom task's verifier, or its final answer when the verifier is your own function).
    ``normalized_exact``: the final answers match. A built-in verifier name or ``regex:PATTERN``: that verifier's
    reading agrees. ``module:function``: your ``function(response, reference) -> bool``.
    """
    if spec == "task":
        key = task.answer_key or final_answer_key
    elif spec == "normalized_exact":
        key = final_answer_key
    else:
        key = _answer_key(spec, "--equivalence")
        if key is None:
            return resolve_verifier(spec, "--equivalence")
    return lambda response, reference: _equal_keys(key, response, reference)

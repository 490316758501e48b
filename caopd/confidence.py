"""The one confidence parser: where a response states its confidence, and what value it states.

A confidence statement is a line that starts with the label ``Confidence:`` (case-insensitive, markdown
emphasis allowed: ``**Confidence:** 0.8``). The word "confidence" elsewhere, e.g. inside a Thought, is not a
statement. When a response has several statements, the last one counts: it is the one CaOPD rewrites in
training, so evaluation reads the same one.

Values: decimals on the 0-1 scale the prompts ask for; ``85%`` and a bare ``85`` are percentages; ``8/10`` is a
fraction (0.8). A value above the top of the scale (``1.25``: SmolLM2-135M writes such values in about 40% of its
arithmetic answers) is read as 1.0, the most the scale can say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Line-anchored label; bounded character classes keep the scan linear on any input.
_LABEL = re.compile(r"^[ \t>*_#-]{0,8}confidence[ \t*_]{0,4}:", re.IGNORECASE | re.MULTILINE)
# A plain decimal, a fraction (8/10) or a percentage; anything glued to it (1e9, 0.5x, 12.3.4, 8/x) is not a number
# we accept.
_NUMBER = r"(\d{1,6}(?:\.\d{1,12})?|\.\d{1,12})"
_VALUE = re.compile(
    rf"[ \t*_]{{0,8}}{_NUMBER}(?:[ \t]{{0,4}}/[ \t]{{0,4}}{_NUMBER})?[ \t]{{0,4}}(%?)(?![ \t]{{0,4}}/|[\w.]*\w)"
)
_PARTIAL_LABEL_TARGET = "confidence:"


@dataclass(frozen=True)
class ConfidenceStatement:
    """Where the last confidence statement begins (start of its line) and the value it gives, if valid."""

    line_start: int
    value: float | None


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match of ``pattern`` in ``text`` (one linear scan), or None."""
    found = None
    for found in pattern.finditer(text):  # noqa: B007 - the loop leaves the last match behind
        pass
    return found


def find_confidence_statement(text: str) -> ConfidenceStatement | None:
    """The last line-anchored ``Confidence:`` statement of ``text``, or None when there is none."""
    last = last_match(_LABEL, text)
    if last is None:
        return None
    line_end = text.find("\n", last.end())
    rest_of_line = text[last.end() : line_end if line_end != -1 else len(text)]
    return ConfidenceStatement(line_start=last.start(), value=_parse_value(rest_of_line))


def _parse_value(fragment: str) -> float | None:
    match = _VALUE.match(fragment)
    if match is None:
        return None
    text, denominator, percent = match.group(1), match.group(2), match.group(3)
    number = float(text)
    if denominator is not None:  # "8/10": a fraction of the whole scale
        if float(denominator) == 0:
            return None
        number = number / float(denominator)
    elif percent or (number > 1.0 and text.isdigit()):
        number = number / 100.0  # "85%", and a bare whole number such as "85", are percentages
    # Above the top of the scale ("1.25", "150%") the response claims more than certainty: it reads as 1.0, not as
    # a missing confidence (which would count as 0.0 and hide exactly the overconfidence being measured).
    return min(number, 1.0)


def parse_confidence(text: str) -> float | None:
    """The stated confidence in [0, 1], or None when it is missing or unparsable."""
    statement = find_confidence_statement(text)
    return None if statement is None else statement.value


def confidence_statement_spans(text: str) -> list[tuple[int, int]]:
    """Where every confidence statement of ``text`` lies: [start of its line, end of its line break).

    A last line that is a cut-off label ("Conf") counts as one too (see ``trailing_partial_label_start``).
    """
    spans = []
    for label in _LABEL.finditer(text):
        line_end = text.find("\n", label.end())
        spans.append((label.start(), len(text) if line_end == -1 else line_end + 1))
    partial = trailing_partial_label_start(text)
    if partial is not None and (not spans or spans[-1][1] <= partial):
        spans.append((partial, len(text)))
    return spans


def trailing_partial_label_start(text: str) -> int | None:
    """Start of a last line that is a cut-off ``Confidence:`` label ("Conf", "Confidence"), else None.

    A rollout stopped by the length limit can end in the middle of the label; that fragment belongs to the
    confidence segment and is dropped with it.
    """
    line_start = text.rfind("\n") + 1
    fragment = text[line_start:].strip(" \t*_>#-").lower()
    if fragment and _PARTIAL_LABEL_TARGET.startswith(fragment) and len(fragment) >= 4:
        return line_start
    return None

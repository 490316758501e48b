"""The one confidence parser: where a response states its confidence, and what value it states.

A confidence statement is one of:

- a line that starts with the label ``Confidence:`` (case-insensitive, markdown emphasis allowed:
  ``**Confidence:** 0.8``): the whole line is the statement;
- an inline one in brackets after an answer, ``Answer: Paris (Confidence: 0.6)``: the brackets are the statement;
- an XML tag, ``<confidence>0.7</confidence>`` (RLCR's format): the tag is the statement.

The word "confidence" elsewhere, e.g. inside a Thought, is not a statement. When a response has several, the last
one counts: CaOPD's rewrite removes every one and appends its own, so evaluation reads the same one training writes.

Values, one scale rule: a number from 0 to 1 is a probability; a number above 1 and up to 100 is a percentage
(``85`` is 0.85, ``7.5`` is 0.075), with or without a ``%`` sign; ``8/10`` is a fraction (0.8); anything above the
whole scale (``150%``, ``250``, ``12/10``) claims more than certainty and reads as 1.0 (a missing value would count
as 0.0 and hide exactly the overconfidence being measured). Decimals may use a comma (``0,9``), digits of any script
(``٠٫٩``), and exponents (``1e-3``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Line-anchored label; bounded character classes keep the scan linear on any input.
_LABEL = re.compile(r"^[ \t>*_#-]{0,8}confidence[ \t*_]{0,4}:", re.IGNORECASE | re.MULTILINE)
_DIGITS = r"(?:\d{1,6}(?:[.,]\d{1,12})?(?:[eE][-+]?\d{1,3})?|[.,]\d{1,12})"
_NUMBER = f"({_DIGITS})"
# A plain number, a fraction (8/10) or a percentage; anything glued to it (0.5x, 12.3.4, 8/x) is not a number.
_VALUE = re.compile(
    rf"[ \t*_]{{0,8}}{_NUMBER}(?:[ \t]{{0,4}}/[ \t]{{0,4}}{_NUMBER})?[ \t]{{0,4}}(%?)(?![ \t]{{0,4}}/|[\w.,]*\w)"
)
_INLINE = re.compile(
    rf"[ \t]?[(\[][ \t]{{0,4}}confidence[ \t]{{0,4}}[:=][ \t]{{0,4}}({_DIGITS}(?:[ \t]{{0,4}}%)?)[ \t]{{0,4}}[)\]]",
    re.IGNORECASE,
)
_TAG = re.compile(r"<confidence>[ \t]{0,8}([^<\n]{0,40}?)[ \t]{0,8}</confidence>", re.IGNORECASE)
_PARTIAL_LABEL_TARGET = "confidence:"
_SCRIPT_SEPARATORS = str.maketrans({"\u066b": ".", "\u066c": ","})  # Arabic decimal and thousands separators


@dataclass(frozen=True)
class ConfidenceStatement:
    """Where the last confidence statement begins and the value it gives, if valid."""

    line_start: int
    value: float | None


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match of ``pattern`` in ``text`` (one linear scan), or None."""
    found = None
    for found in pattern.finditer(text):  # noqa: B007 - the loop leaves the last match behind
        pass
    return found


def ascii_digits(text: str) -> str:
    """``text`` with digits of other scripts (Arabic-Indic, Devanagari, full-width, ...) as ASCII digits."""
    if text.isascii():
        return text
    converted = (str(unicodedata.decimal(char)) if unicodedata.category(char) == "Nd" else char for char in text)
    return "".join(converted).translate(_SCRIPT_SEPARATORS)


def _statements(text: str) -> list[tuple[int, int, str]]:
    """Every statement as (start, end, the text that holds its value), in order of appearance."""
    found = []
    for label in _LABEL.finditer(text):
        line_end = text.find("\n", label.end())
        line_end = len(text) if line_end == -1 else line_end
        found.append((label.start(), min(line_end + 1, len(text)), text[label.end() : line_end]))
    found += [(match.start(), match.end(), " " + match.group(1)) for match in _INLINE.finditer(text)]
    found += [(match.start(), match.end(), " " + match.group(1)) for match in _TAG.finditer(text)]
    return sorted(found)


def find_confidence_statement(text: str) -> ConfidenceStatement | None:
    """The last confidence statement of ``text`` (line, inline or tag), or None when there is none."""
    statements = _statements(ascii_digits(text)) if text else []
    if not statements:
        return None
    start, _, value_text = statements[-1]
    return ConfidenceStatement(line_start=start, value=_parse_value(value_text.split("\n", 1)[0]))


def _number(text: str) -> float:
    if "," in text and "." not in text:
        text = text.replace(",", ".")
    return float(text)


def _parse_value(fragment: str) -> float | None:
    match = _VALUE.match(fragment)
    if match is None:
        return None
    try:
        number = _number(match.group(1))
        denominator = None if match.group(2) is None else _number(match.group(2))
    except ValueError:
        return None
    if denominator is not None:  # "8/10": a fraction of the whole scale
        if denominator == 0:
            return None
        number = number / denominator
    elif match.group(3) or number > 1.0:
        number = number / 100.0  # "85%", and any number above 1 ("85", "7.5"), is a percentage
    return min(number, 1.0)  # above the whole scale: more than certainty


def parse_confidence(text: str) -> float | None:
    """The stated confidence in [0, 1], or None when it is missing or unparsable."""
    statement = find_confidence_statement(text)
    return None if statement is None else statement.value


def confidence_statement_spans(text: str) -> list[tuple[int, int]]:
    """Where every confidence statement of ``text`` lies: a labelled line from its start through its line break, an
    inline bracket (with the space before it), a tag. A last line that is a cut-off label ("Conf") counts too
    (see ``trailing_partial_label_start``). Positions are those of ``text`` (other scripts' digits are single
    characters either way)."""
    spans: list[tuple[int, int]] = []
    for start, end, _ in _statements(ascii_digits(text)):
        if spans and start < spans[-1][1]:  # an inline statement inside a labelled line: one span
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
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

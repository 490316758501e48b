"""The one confidence parser: where a response states its confidence, and what value it states.

Two readings of a stated value, chosen with ``--confidence_reading`` on every entry point that reads one:

``paper`` (the default) is the rule behind every number of the CaOPD paper (its release's
``eval/parse_confidence.py``), kept exactly except where that script crashes or is plainly broken
(docs/differences.md lists each difference):

- the label comes first: the last ``Confidence:`` anywhere in the response (case-insensitive; the same line as the
  answer, or the value on the next line, both count), then a run of digits and dots; the value is that number
  clipped into [0, 1], so ``1.20``, ``8`` and ``85%`` all read as 1.0. Fixes: a run with a trailing dot
  (``0.85.``, which raises there) reads without it; a decimal comma (``0,9``, 0.0 there) reads as a decimal point;
  markdown emphasis around the label (``**Confidence:** 0.8``, unread there) is allowed;
- only when no label matches, the last ``<confidence>X</confidence>`` tag (closed or not): X with ``%`` or in
  (10, 100] is a percentage, in (1, 10] a tenth, in [0, 1] a probability, above 100 a percentage (clipped to 1).

``percent`` (RLCR's evaluation rule, this project's rule until 2026-12) reads a value above 1 as a percentage:
``85`` is 0.85, ``7.5`` is 0.075, ``8/10`` is 0.8, anything above the whole scale is 1.0. It reads only
statements (``find_confidence_statement``):

- a line that starts with the label ``Confidence:`` (markdown emphasis allowed): the whole line is the statement;
- an inline one in brackets after an answer, ``Answer: Paris (Confidence: 0.6)``;
- an XML tag, ``<confidence>0.7</confidence>`` (RLCR's format).

Decimals may use a comma (``0,9``), digits of any script (``٠٫٩``), and exponents (``1e-3``).

Either way the last statement counts, and every reading records the number as written (``stated``): a statement
outside [0, 1] is *out of range* (RLCR's format check fails it; metrics.json reports its share). The rewrite of
CaOPD's targets removes the statements ``confidence_statement_spans`` finds and appends its own last, so every
reading reads P_acc back from a target.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE_READINGS = ("paper", "percent")
DEFAULT_READING = "paper"
READING_HELP = (
    "how a stated confidence is read: paper (the CaOPD paper's evaluation: the last 'Confidence:' value clipped "
    "into [0, 1], so 1.20 and 85 read 1.0) or percent (RLCR's evaluation: a value above 1 is a percentage)"
)

# --- the percent reading's statements (also where CaOPD's rewrite removes them) -----------------------------
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

# --- the paper's reading -----------------------------------------------------------------------------------
# The release's label: "confidence:", any whitespace (newlines too), a run of digits and dots. Ours also lets
# markdown emphasis stand around the colon, and reads "0,9" whole (a decimal comma) where the release reads "0".
_PAPER_LABEL = re.compile(r"confidence[*_]{0,4}:[*_]{0,4}\s*(\d+,\d+(?!\d|\.\d)|[\d.]+)", re.IGNORECASE)
# The release's tag, closed or not: its content up to the closing tag or the end of the line.
_PAPER_TAG = re.compile(r"<confidence>([^<\n]{0,40})", re.IGNORECASE)


@dataclass(frozen=True)
class StatedConfidence:
    """A response's last confidence statement as one reading reads it.

    ``value``: the confidence in [0, 1], None when no statement is found or its value does not parse (it then
    counts as 0.0 in the headline metrics, as in the paper's scripts). ``stated``: the number as written, before
    any rescaling or clipping (``8/10`` is written as 0.8).
    """

    value: float | None = None
    stated: float | None = None

    @property
    def out_of_range(self) -> bool:
        """The number as written lies outside [0, 1] (``1.20``, ``85``, ``85%``): RLCR's format check fails it."""
        return self.stated is not None and not 0.0 <= self.stated <= 1.0


NOT_STATED = StatedConfidence()


def check_reading(reading: str) -> str:
    """``reading`` when it is one of ``CONFIDENCE_READINGS``, else a ``ValueError`` naming the choices."""
    if reading not in CONFIDENCE_READINGS:
        raise ValueError(f"confidence reading must be one of {', '.join(CONFIDENCE_READINGS)}, got {reading!r}")
    return reading


def read_confidence(text: str, reading: str = DEFAULT_READING) -> StatedConfidence:
    """The last confidence ``text`` states, read by ``reading`` (``paper`` or ``percent``)."""
    if not text:
        return NOT_STATED
    if check_reading(reading) == "paper":
        return _read_as_paper(text)
    statements = _statements(ascii_digits(text))
    return _parse_value(statements[-1][2].split("\n", 1)[0]) if statements else NOT_STATED


def parse_confidence(text: str, reading: str = DEFAULT_READING) -> float | None:
    """The stated confidence in [0, 1], or None when it is missing or unparsable."""
    return read_confidence(text, reading).value


def reading_summary(out_of_range: Sequence[bool], reading: str) -> dict[str, Any]:
    """What metrics.json records about the reading: its name, and the share of responses whose statement is out of
    range (written outside [0, 1]: the values the two readings disagree about)."""
    share = sum(out_of_range) / len(out_of_range) if out_of_range else 0.0
    return {"confidence_reading": reading, "confidence_out_of_range_share": share}


def _read_as_paper(text: str) -> StatedConfidence:
    label = last_match(_PAPER_LABEL, text)
    if label is not None:
        return _clipped(_release_number(label.group(1)))
    tag = last_match(_PAPER_TAG, text)
    if tag is None:
        return NOT_STATED
    content = tag.group(1).split("</", 1)[0].strip()
    percent = content.endswith("%")
    number = _release_number(content.rstrip("%").strip())
    if number is None:
        return NOT_STATED
    if percent or number > 10.0:
        scaled = number / 100.0
    elif number > 1.0:
        scaled = number / 10.0
    else:
        scaled = number
    return StatedConfidence(value=min(max(scaled, 0.0), 1.0), stated=number)


def _release_number(run: str) -> float | None:
    """``float(run)`` as the release takes it; a trailing dot (end of sentence) is dropped and a decimal comma read,
    where the release raises or reads the digits before the comma; anything else that does not parse is None."""
    try:
        return float(run.rstrip(".").replace(",", "."))
    except ValueError:
        return None


def _clipped(number: float | None) -> StatedConfidence:
    if number is None:
        return NOT_STATED
    return StatedConfidence(value=min(max(number, 0.0), 1.0), stated=number)


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


def _number(text: str) -> float:
    if "," in text and "." not in text:
        text = text.replace(",", ".")
    return float(text)


def _parse_value(fragment: str) -> StatedConfidence:
    """The percent reading of one statement's value text."""
    match = _VALUE.match(fragment)
    if match is None:
        return NOT_STATED
    try:
        number = _number(match.group(1))
        denominator = None if match.group(2) is None else _number(match.group(2))
    except ValueError:
        return NOT_STATED
    if denominator is not None:  # "8/10": a fraction of the whole scale
        if denominator == 0:
            return NOT_STATED
        number = number / denominator
        stated = number
    else:
        stated = number
        if match.group(3) or number > 1.0:
            number = number / 100.0  # "85%", and any number above 1 ("85", "7.5"), is a percentage
    return StatedConfidence(value=min(number, 1.0), stated=stated)  # above the whole scale: more than certainty


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

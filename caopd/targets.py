"""CaOPD target replacement: pure string and token-list functions, no torch.

Three places carry the empirical success rate P_acc (formatted ``f"{p:.2f}"``):

1. the student completion: its confidence statements are removed (only those lines; the rest of the response
   stays) and ``Confidence: {P_acc}`` is appended;
2. the teacher demonstration: its ``Confidence: 1.00`` becomes ``Confidence: {P_acc}``;
3. a teacher note, inserted before the teacher's closing instruction.

Without calibration (plain SDFT) the teacher context is the same text with ``Confidence: 1.00`` and no note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from caopd.confidence import confidence_statement_spans

TEACHER_MODES = ("demo", "correct_solution")
_CONTEXT_WORDING = {
    "demo": (
        "This is an example for a response to the question:\n",
        "Now answer with a response of your own, including the thinking process.\n",
    ),
    "correct_solution": ("Correct solution:\n", "Correctly solve the original question.\n"),
}
NOTE_TEMPLATE = (
    "Note: The empirical confidence for this question is {p}. Output this exact value in the 'Confidence:' field."
)


def format_confidence(p_acc: float) -> str:
    """P_acc as written into every target: two decimals, as Python rounds them (3/8 -> '0.38')."""
    if not 0.0 <= p_acc <= 1.0:
        raise ValueError(f"P_acc must lie in [0, 1], got {p_acc}")
    return f"{p_acc:.2f}"


def confidence_line(p_acc: float) -> str:
    return f"Confidence: {format_confidence(p_acc)}"


def teacher_note(p_acc: float) -> str:
    return NOTE_TEMPLATE.format(p=format_confidence(p_acc))


def kept_spans(text: str) -> list[tuple[int, int]]:
    """The character spans of ``text`` outside its confidence statements, in order."""
    spans, position = [], 0
    for start, end in confidence_statement_spans(text):
        if start > position:
            spans.append((position, start))
        position = end
    if position < len(text):
        spans.append((position, len(text)))
    return spans


def without_confidence(text: str) -> str:
    """``text`` with every confidence statement line removed, and nothing else."""
    return "".join(text[start:end] for start, end in kept_spans(text))


def strip_confidence(text: str) -> str:
    """The response without its confidence statements and without trailing whitespace."""
    return without_confidence(text).rstrip()


def rewrite_completion_text(text: str, p_acc: float) -> str:
    """The student target as text: the response without its confidence statements, then ``Confidence: {P_acc}``."""
    kept = without_confidence(text)
    return kept + _separator(kept) + confidence_line(p_acc)


def _separator(kept: str) -> str:
    return "" if not kept or kept.endswith("\n") else "\n"


def kept_token_count(token_ids: Sequence[int], cut: int, decode: Callable[[Sequence[int]], str]) -> int:
    """The number of leading sampled tokens whose text ends at or before character ``cut``.

    The sampled ids are kept as they are (decoding and re-encoding could change them); the decoded length of a
    prefix grows with its length, so a binary search needs only O(log n) decodes.
    """
    low, high = 0, len(token_ids)
    while low < high:
        middle = (low + high + 1) // 2
        if len(decode(token_ids[:middle])) <= cut:
            low = middle
        else:
            high = middle - 1
    return low


def _first_token_starting_at_or_after(
    token_ids: Sequence[int], position: int, decode: Callable[[Sequence[int]], str]
) -> int:
    """The smallest m whose first m tokens decode to at least ``position`` characters."""
    low, high = 0, len(token_ids)
    while low < high:
        middle = (low + high) // 2
        if len(decode(token_ids[:middle])) >= position:
            high = middle
        else:
            low = middle + 1
    return low


def _span_ids(token_ids, text, start, end, decode, encode) -> list[int]:
    """Token ids for ``text[start:end]``: the sampled ids wholly inside the span, re-encoded text at its two edges."""
    first = _first_token_starting_at_or_after(token_ids, start, decode)
    last = kept_token_count(token_ids, end, decode)
    if first > last:  # the whole span lies inside one sampled token
        return encode(text[start:end])
    head = text[start : len(decode(token_ids[:first]))]
    tail = text[len(decode(token_ids[:last])) : end]
    return (encode(head) if head else []) + list(token_ids[first:last]) + (encode(tail) if tail else [])


def rewrite_completion_ids(
    token_ids: Sequence[int],
    p_acc: float,
    decode: Callable[[Sequence[int]], str],
    encode: Callable[[str], list[int]],
    stop_token_id: int,
) -> list[int]:
    """The student target as token ids: the sampled ids outside the confidence statements, ``Confidence: {P_acc}``,
    then ``stop_token_id`` (the token the rollout stopped on).

    ``token_ids`` is the rollout without its stop token. Only the characters where a removed statement meets a
    sampled token are re-encoded; every other token is kept as it was sampled.
    """
    text = decode(token_ids)
    ids: list[int] = []
    for start, end in kept_spans(text):
        ids += _span_ids(token_ids, text, start, end, decode, encode)
    return ids + encode(_separator(without_confidence(text)) + confidence_line(p_acc)) + [stop_token_id]


def closing_instruction(reprompt_template: str) -> str:
    """An SDPO reprompt template's text after its last placeholder: the teacher's closing instruction, before which
    the CaOPD note goes (TRL's default: ``"\n\nCorrectly solve the original question.\n"``)."""
    tail = reprompt_template.rsplit("}", 1)[-1]
    if not tail.strip():
        raise ValueError(
            "the reprompt template must end with a closing instruction after its last placeholder (the CaOPD note "
            "goes before it), e.g. '{prompt}{solution}{feedback}\\n\\nCorrectly solve the original question.\\n'"
        )
    return tail


def with_note_before(text: str, note: str, closing: str) -> str | None:
    """``text`` with ``note`` as its own paragraph before the closing instruction it ends with; None when it does
    not end with it."""
    if not text.endswith(closing):
        return None
    return f"{text[: -len(closing)]}\n\n{note}{closing}"


def reserved_completion_tokens(encode: Callable[[str], list[int]]) -> int:
    """Tokens to keep free at generation time so that the appended confidence line and EOS always fit."""
    return max(len(encode("\n" + confidence_line(k / 100))) for k in range(101)) + 1


def teacher_context(mode: str, reference: str, p_acc: float | None, instruction: str | None = None) -> str:
    """The teacher's privileged context for one rollout.

    ``reference`` is the golden demonstration (``demo``) or a verified correct rollout (``correct_solution``);
    any confidence it states is replaced. ``p_acc=None`` gives the plain SDFT context (``Confidence: 1.00``, no
    note); a value gives the CaOPD context with that confidence and the note before the closing instruction.
    ``instruction`` replaces the paper's closing instruction of the mode (a newline is added if it lacks one):
    small models can read "including the thinking process" as "answer in another format" (docs/reproduction.md,
    "Base vs SDFT vs CaOPD on this CPU").
    """
    if mode not in _CONTEXT_WORDING:
        raise ValueError(f"unknown teacher context mode {mode!r}; choose one of {', '.join(TEACHER_MODES)}")
    opening, closing = _CONTEXT_WORDING[mode]
    if instruction is not None:
        if not instruction.strip():
            raise ValueError("the teacher instruction is empty; give a sentence, or leave it unset for the paper's")
        closing = instruction if instruction.endswith("\n") else instruction + "\n"
    demonstrated = f"{opening}{strip_confidence(reference)}\n{confidence_line(1.0 if p_acc is None else p_acc)}"
    blocks = [demonstrated] if p_acc is None else [demonstrated, teacher_note(p_acc)]
    return "\n\n".join([*blocks, closing])


def statement_token_mask(token_ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> list[bool]:
    """Which tokens of a completion carry a confidence statement (their text overlaps a statement line).

    The distillation loss at these positions is the calibration part of paper Eq. 7 (logged as
    ``caopd/loss_confidence``); everything else is the reasoning part. A stop token decodes to nothing and is not
    part of a statement.
    """
    text = decode(token_ids)
    mask = [False] * len(token_ids)
    for start, end in confidence_statement_spans(text):
        first = kept_token_count(token_ids, start, decode)
        last = _first_token_starting_at_or_after(token_ids, len(text[:end].rstrip("\n")), decode)
        for position in range(first, max(first, last)):
            mask[position] = True
    return mask


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share: a rewritten target keeps the sampled tokens up to there."""
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length

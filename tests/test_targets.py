"""CaOPD target replacement on exact strings: completions, teacher contexts, token ids."""

import pytest

from caopd.confidence import confidence_statement_spans
from caopd.targets import (
    format_confidence,
    kept_token_count,
    reserved_completion_tokens,
    rewrite_completion_ids,
    rewrite_completion_text,
    teacher_context,
)

NOTE_062 = (
    "Note: The empirical confidence for this question is 0.62. Output this exact value in the 'Confidence:' field."
)


@pytest.mark.parametrize(
    ("correct", "expected"),
    [
        (0, "0.00"),
        (1, "0.12"),
        (2, "0.25"),
        (3, "0.38"),
        (4, "0.50"),
        (5, "0.62"),
        (6, "0.75"),
        (7, "0.88"),
        (8, "1.00"),
    ],
)
def test_k8_values_are_formatted_as_python_rounds_them(correct, expected):
    assert format_confidence(correct / 8) == expected


def test_out_of_range_p_acc_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        format_confidence(1.5)


def test_rollout_without_confidence_gets_one_appended():
    rollout = 'Thought: I need the weather.\nAction: getWeather\nAction Input: {"city": "Paris"}'
    assert rewrite_completion_text(rollout, 5 / 8) == rollout + "\nConfidence: 0.62"


def test_confidence_inside_a_thought_is_kept():
    rollout = "Thought: my confidence: high, the API fits.\nAction: getWeather\nAction Input: {}\nConfidence: 0.95"
    assert rewrite_completion_text(rollout, 3 / 8) == (
        "Thought: my confidence: high, the API fits.\nAction: getWeather\nAction Input: {}\nConfidence: 0.38"
    )


def test_every_confidence_statement_is_removed_and_nothing_else():
    rollout = (
        "Action: a\nAction Input: {}\nConfidence: 0.9\n"
        "Action: b\nAction Input: {}\nConfidence: 0.99\nObservation: made up"
    )
    assert rewrite_completion_text(rollout, 1 / 8) == (
        "Action: a\nAction Input: {}\nAction: b\nAction Input: {}\nObservation: made up\nConfidence: 0.12"
    )


def test_a_confidence_line_before_the_answer_keeps_the_answer():
    rollout = "<reasoning>\nbecause\n</reasoning>\nConfidence: 0.9\n<answer>\nA\n</answer>"
    assert rewrite_completion_text(rollout, 5 / 8) == (
        "<reasoning>\nbecause\n</reasoning>\n<answer>\nA\n</answer>\nConfidence: 0.62"
    )


def test_per_step_confidences_leave_demonstrations_and_peer_solutions_too():
    steps = "Thought: t1\nAction: a\nAction Input: {}\nConfidence: 0.8\nThought: t2\nAction: b\nAction Input: {}"
    plain = "Thought: t1\nAction: a\nAction Input: {}\nThought: t2\nAction: b\nAction Input: {}"
    assert teacher_context("demo", steps + "\nConfidence: 0.7", 5 / 8).startswith(
        f"This is an example for a response to the question:\n{plain}\nConfidence: 0.62\n\n{NOTE_062}"
    )
    assert teacher_context("correct_solution", steps, None).startswith(f"Correct solution:\n{plain}\nConfidence: 1.00")


def test_markdown_label_is_a_confidence_statement():
    assert rewrite_completion_text("<answer>B</answer>\n**Confidence:** 95%", 7 / 8) == (
        "<answer>B</answer>\nConfidence: 0.88"
    )


def test_rollout_cut_at_the_length_limit_in_the_label_loses_the_fragment():
    assert rewrite_completion_text("Answer: 12\nConfid", 0.25) == "Answer: 12\nConfidence: 0.25"


def test_rollout_cut_mid_sentence_keeps_everything_sampled():
    assert rewrite_completion_text("Thought: first I will", 0.0) == "Thought: first I will\nConfidence: 0.00"


def test_empty_rollout_becomes_the_confidence_line():
    assert rewrite_completion_text("", 1.0) == "Confidence: 1.00"


def test_statement_spans_cover_whole_lines_and_a_cut_off_label():
    text = "x\nConfidence: 0.5\ny\n  Confidence: 0.7 trailing\nConf"
    first, second, cut = confidence_statement_spans(text)
    assert text[slice(*first)] == "Confidence: 0.5\n"
    assert text[slice(*second)] == "  Confidence: 0.7 trailing\n"
    assert text[slice(*cut)] == "Conf"


def test_demo_teacher_context_plain_sdft():
    assert teacher_context("demo", "Action: a\nAction Input: {}", None) == (
        "This is an example for a response to the question:\nAction: a\nAction Input: {}\nConfidence: 1.00\n\n"
        "Now answer with a response of your own, including the thinking process.\n"
    )


def test_demo_teacher_context_caopd_rewrites_confidence_and_inserts_note():
    assert teacher_context("demo", "Action: a\nAction Input: {}", 5 / 8) == (
        "This is an example for a response to the question:\nAction: a\nAction Input: {}\nConfidence: 0.62\n\n"
        f"{NOTE_062}\n\n"
        "Now answer with a response of your own, including the thinking process.\n"
    )


def test_correct_solution_context_replaces_the_rollouts_own_confidence():
    solution = "<reasoning>\nbecause\n</reasoning>\n<answer>\nC\n</answer>\nConfidence: 0.99"
    assert teacher_context("correct_solution", solution, 5 / 8) == (
        "Correct solution:\n<reasoning>\nbecause\n</reasoning>\n<answer>\nC\n</answer>\nConfidence: 0.62\n\n"
        f"{NOTE_062}\n\nCorrectly solve the original question.\n"
    )
    assert teacher_context("correct_solution", solution, None) == (
        "Correct solution:\n<reasoning>\nbecause\n</reasoning>\n<answer>\nC\n</answer>\nConfidence: 1.00\n\n"
        "Correctly solve the original question.\n"
    )


def test_teacher_instruction_replaces_only_the_closing_line():
    reference = "Action: a\nAction Input: {}"
    paper = teacher_context("demo", reference, 5 / 8)
    ours = teacher_context("demo", reference, 5 / 8, "Respond like the example.")
    assert ours == paper.replace(
        "Now answer with a response of your own, including the thinking process.\n", "Respond like the example.\n"
    )
    assert ours.endswith(f"{NOTE_062}\n\nRespond like the example.\n")
    assert teacher_context("correct_solution", reference, None, "Solve it again.\n").endswith(
        "1.00\n\nSolve it again.\n"
    )


def test_blank_teacher_instruction_is_an_error():
    with pytest.raises(ValueError, match="teacher instruction is empty"):
        teacher_context("demo", "x", None, "  \n")


def test_unknown_teacher_mode_is_an_error():
    with pytest.raises(ValueError, match="demo, correct_solution"):
        teacher_context("golden", "x", None)


# ---- token level: a toy tokenizer with one token per character keeps the arithmetic visible


def _decode(ids):
    return "".join(chr(i) for i in ids)


def _encode(text):
    return [ord(c) for c in text]


EOS = 0


def test_rewrite_ids_keeps_the_sampled_prefix_and_appends_confidence_and_eos():
    rollout = _encode("Answer: 7\nConfidence: 0.99")
    target = rewrite_completion_ids(rollout, 0.5, _decode, _encode, EOS)
    assert target[: len("Answer: 7\n")] == rollout[: len("Answer: 7\n")]
    assert _decode(target[:-1]) == "Answer: 7\nConfidence: 0.50"
    assert target[-1] == EOS


def test_rewrite_ids_never_re_encodes_the_kept_prefix():
    # A tokenizer whose encode disagrees with the sampled ids: the sampled ids must survive untouched.
    sampled = [ord("A"), ord("b"), ord("c")]
    target = rewrite_completion_ids(sampled, 1.0, _decode, lambda text: [9999] * len(text), EOS)
    assert target[:3] == sampled
    assert target[3:-1] == [9999] * len("\nConfidence: 1.00")


def test_kept_token_count_with_multi_character_tokens():
    vocabulary = {1: "Answer", 2: ": 7", 3: "\n", 4: "Conf", 5: "idence: 0.9"}

    def decode(ids):
        return "".join(vocabulary[i] for i in ids)

    ids = [1, 2, 3, 4, 5]
    ((cut, _),) = confidence_statement_spans(decode(ids))
    assert kept_token_count(ids, cut, decode) == 3


def test_a_token_straddling_a_statement_keeps_its_part_outside_re_encoded():
    vocabulary = {1: "Answer: 7", 2: "\nConf", 3: "idence: 0.9"}

    def decode(ids):
        return "".join(vocabulary[i] for i in ids)

    target = rewrite_completion_ids([1, 2, 3], 0.25, decode, _encode, EOS)
    assert target[0] == 1 and decode([target[0]]) + _decode(target[1:-1]) == "Answer: 7\nConfidence: 0.25"


def test_sampled_ids_on_both_sides_of_a_removed_statement_survive():
    sampled = _encode("A\nConfidence: 0.9\nB")
    target = rewrite_completion_ids(sampled, 0.5, _decode, lambda text: [9999] * len(text), EOS)
    assert target[:2] == _encode("A\n") and target[2] == ord("B")  # not re-encoded: the disagreeing encoder
    assert target[3:-1] == [9999] * len("\nConfidence: 0.50") and target[-1] == EOS


def test_reserved_tokens_cover_every_value_and_eos():
    assert reserved_completion_tokens(_encode) == len("\nConfidence: 0.00") + 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: Paris (Confidence: 0.6)", "Answer: Paris\nConfidence: 0.25"),
        ("Answer: Paris [confidence: 60%]\nConfidence: 0.9", "Answer: Paris\nConfidence: 0.25"),
        ("<answer>B</answer> <confidence>0.8</confidence>", "<answer>B</answer> \nConfidence: 0.25"),
    ],
)
def test_inline_and_tagged_confidences_do_not_survive_the_rewrite(text, expected):
    assert rewrite_completion_text(text, 0.25) == expected

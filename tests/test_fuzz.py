"""No response string can crash or hang the parsers and verifiers (property-based, with a time bound per call)."""

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from caopd.confidence import CONFIDENCE_READINGS, parse_confidence
from caopd.targets import rewrite_completion_text
from caopd.tasks.arithmetic import verify_arithmetic
from caopd.verifiers import tooluse_golden_problem, verify_mcq, verify_tooluse

FRAGMENTS = [
    "Confidence:", "confidence: ", "**Confidence:** ", "0.85", "0.85.", "85%", "1e9", "-0.3", "1.25", "NaN",
    "Action:", "Action Input:", "Thought:", "Answer:", "<answer>", "</answer>", "{", "}", "[", "]", '"k": ',
    "\n", "\r\n", " ", "é", "🙂", "\u2212", "\x00", "{" * 50, "[" * 300, "9" * 40, "%",
]  # fmt: skip
responses = st.one_of(
    st.text(max_size=2000),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=20), max_size=200).map("".join),
)
goldens = st.one_of(
    st.just([{"Action": "search", "Action_Input": '{"q": "x"}'}]),
    st.lists(st.fixed_dictionaries({"Action": st.text(max_size=10), "Action_Input": st.text(max_size=30)}), max_size=3),
    st.text(max_size=20),
    st.none(),
)
BOUND_S = 1.0


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    assert time.perf_counter() - start < BOUND_S
    return result


@settings(max_examples=300, deadline=None)
@given(responses)
def test_confidence_parser_returns_a_probability_or_none(response):
    for reading in CONFIDENCE_READINGS:
        value = _timed(parse_confidence, response, reading)
        assert value is None or 0.0 <= value <= 1.0


@settings(max_examples=300, deadline=None)
@given(responses, goldens)
def test_verifiers_return_booleans(response, golden):
    for verify in (verify_tooluse, verify_mcq, verify_arithmetic):
        try:
            verdict = _timed(verify, response, golden)
        except (AttributeError, TypeError):
            # a golden of the wrong type is a data error, reported by the metric scripts, not a response crash
            assert not isinstance(golden, list) or verify is not verify_tooluse
            continue
        assert isinstance(verdict, bool)


@settings(max_examples=200, deadline=None)
@given(responses, st.sampled_from([0.0, 0.125, 0.375, 0.625, 1.0]))
def test_rewritten_completion_states_exactly_p_acc(response, p_acc):
    target = _timed(rewrite_completion_text, response, p_acc)
    assert target.endswith(f"Confidence: {p_acc:.2f}")
    for reading in CONFIDENCE_READINGS:  # every reading reads back what the rewrite wrote
        assert parse_confidence(target, reading) == float(f"{p_acc:.2f}")


@settings(max_examples=100, deadline=None)
@given(goldens)
def test_golden_checks_never_raise(golden):
    problem = tooluse_golden_problem(golden)
    assert problem is None or isinstance(problem, str)


def test_a_megabyte_of_junk_per_call_is_fast():
    junk = ("Confidence: 0.9 Action Input: {[" + "é🙂" * 20 + "<answer>\nAnswer: 12\n") * 12000
    assert len(junk.encode()) > 1_000_000
    for function, args in (
        (parse_confidence, (junk,)),
        (verify_tooluse, (junk, [{"Action": "a", "Action_Input": "{}"}])),
        (verify_mcq, (junk, "A")),
        (verify_arithmetic, (junk, 12)),
        (rewrite_completion_text, (junk, 0.5)),
    ):
        _timed(function, *args)

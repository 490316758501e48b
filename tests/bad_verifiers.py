"""Verifiers a user could write wrongly, for test_bad_input.py (``--verifier bad_verifiers:NAME``)."""


def raises(response, answer):
    return int(response) == answer  # ValueError on any response that is not a bare number


def returns_text(response, answer):
    return "yes"


def returns_none(response, answer):
    return None


def works(response, answer):
    return answer in response


NOT_CALLABLE = 3


def fails_on_model_output(response, answer):
    """Passes the start-up check on the demonstration ("Answer: 4"), then fails on the first sampled response."""
    return response.split("Answer:")[1].strip() == answer  # IndexError without "Answer:"


def never(response, reference):
    """An --equivalence that matches nothing, not even a text with itself."""
    return False


def sleeps_on_model_output(response, answer):
    """Passes the start-up check on the demonstration, then hangs (a network call without a timeout, say)."""
    import time

    if "Answer:" not in response:
        time.sleep(3600)
    return True


def exits(response, answer):
    import os

    os._exit(0)


def sys_exits(response, answer):
    import sys

    sys.exit(0)

"""Argument types that refuse what a number flag cannot mean (nan, infinity, a negative count, a boolean), and the
error every bad flag or config value becomes.

Every script's parser uses them (``type=positive_int``), so a bad value is argparse's one ``error:`` line naming the
flag, before anything runs. They also take numbers already parsed (a YAML config's values), and refuse booleans
there (YAML's ``true`` is not the count 1).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any


class CLIError(ValueError):
    """A bad flag value or config file: reported as one line, never as a traceback."""


def _number(value: Any, kind: type) -> float | int:
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError) as err:  # OverflowError: int(inf), YAML's .inf
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {value!r}") from err
    if kind is int and isinstance(value, float) and value != number:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}")
    if kind is float and not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return number


def _ranged(kind: type, name: str, check: Callable[[float], bool], meaning: str) -> Callable[[Any], Any]:
    def convert(value: Any):
        number = _number(value, kind)
        if not check(number):
            raise argparse.ArgumentTypeError(f"must be {meaning}, got {value!r}")
        return number

    convert.__name__ = name
    return convert


integer = _ranged(int, "integer", lambda n: True, "an integer")
positive_int = _ranged(int, "positive_int", lambda n: n >= 1, "a positive integer")
non_negative_int = _ranged(int, "non_negative_int", lambda n: n >= 0, "an integer, 0 or more")
finite_float = _ranged(float, "finite_float", lambda n: True, "a finite number")
positive_float = _ranged(float, "positive_float", lambda n: n > 0, "a positive number")
non_negative_float = _ranged(float, "non_negative_float", lambda n: n >= 0, "a number, 0 or more")
probability = _ranged(float, "probability", lambda n: 0 <= n <= 1, "a number in [0, 1]")
share = _ranged(float, "share", lambda n: 0 < n <= 1, "a number in (0, 1]")
decay_rate = _ranged(float, "decay_rate", lambda n: 0 <= n < 1, "a number in [0, 1)")
port = _ranged(int, "port", lambda n: 1 <= n <= 65535, "a TCP port in 1..65535")


def json_object(value: Any) -> dict | None:
    """A mapping setting's value: JSON text of an object (``null`` for none), or a mapping already parsed."""
    if isinstance(value, dict):
        return value
    refusal = argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"top_k\": 20}}', got {value!r}")
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError) as err:
        raise refusal from err
    if parsed is not None and not isinstance(parsed, dict):
        raise refusal
    return parsed

"""What held-out evaluation during training costs: read from a finished run that evaluated (``--eval_steps``).

Each evaluation logs how long it took (``runtime``) and the mean optimizer step since the previous evaluation
(``seconds_per_step``, sampling included), both in the run's ``eval_history.jsonl``. Evaluating every N steps adds
runtime / (N x seconds_per_step) to the training time; printed for the run's own N and for 10, 50 and 100.

    bash scripts/run_cpu_demo.sh --eval_steps 2         # the CPU demo, evaluating 64 held-out questions
    python bench/eval_cost.py outputs/cpu_demo
"""

from __future__ import annotations

import argparse
import statistics
import sys
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caopd.held_out import HISTORY_NAME, read_history
from caopd.user_errors import one_line_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the output folder of a run trained with --eval_steps")
    options = parser.parse_args(argv)
    history = read_history(options.run)
    timed = [entry for entry in history if entry.get("seconds_per_step") is not None]
    if not timed:
        found = f"{len(history)} evaluation(s), none after an earlier one" if history else f"no {HISTORY_NAME}"
        parser.error(f"{options.run}: {found}; the cost needs a run that evaluated at least twice (--eval_steps N)")
    runtime = statistics.mean(entry["runtime"] for entry in history)
    step = statistics.mean(entry["seconds_per_step"] for entry in timed)
    steps = [entry["step"] for entry in history]
    every = statistics.mode(later - earlier for earlier, later in pairwise(steps))  # the last may come sooner
    samples = history[-1]["n_samples"]
    print(
        f"{options.run}: {len(history)} evaluations of {samples} answers, {runtime:.2f} s each (mean); "
        f"an optimizer step {step:.2f} s (mean of {len(timed)} stretches between evaluations)"
    )
    print(f"{'evaluate every':>15} {'added to the training time':>27}")
    for n in sorted({every, 10, 50, 100}):
        print(f"{n:>9} steps {runtime / (n * step):>26.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))

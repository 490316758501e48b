"""The errors that mean bad input (a flag, a file, a model, a checkpoint, a busy folder), not a defect: every entry
point, the bench scripts included, reports them as one ``error:`` line instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from caopd.backends import BackendError
from caopd.checkpoints import CheckpointError, TrainingDiverged
from caopd.checks import CLIError
from caopd.held_out import HistoryError
from caopd.models import ModelResolutionError
from caopd.prompt_lengths import PromptLengthError
from caopd.run_guard import RunLockError, ignore_further_interrupts, signal_handlers_kept
from caopd.tasks import TaskDataError

USER_ERRORS = (
    CLIError,
    TaskDataError,
    ModelResolutionError,
    BackendError,
    PromptLengthError,
    CheckpointError,
    RunLockError,
    TrainingDiverged,
    HistoryError,
)


def one_line_errors(main: Callable[[], int | None]) -> int | None:
    """Run a script's ``main``: bad input ends in one ``error:`` line (exit 2), Ctrl-C in one line (exit 130)."""
    with signal_handlers_kept():
        return _reported(main)


def _reported(main: Callable[[], int | None]) -> int | None:
    try:
        return main()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ignore_further_interrupts()
        print("stopped by Ctrl-C; run the same command again to go on", file=sys.stderr)
        return 130

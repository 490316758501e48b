"""``python -m caopd.launch [accelerate launch flags] main.py [flags]``: ``accelerate launch``, ending in one line.

``accelerate launch`` ends every failed run in a traceback of its own: for one process a ``CalledProcessError``; for
several, torch elastic stops the other processes and raises its multi-screen report (``ChildFailedError``). The
processes have already said why in one line (``caopd.last_line``: rank 0 prints it; every rank records it for the
launcher). This runs accelerate's own launch command with its own flags and, in place of the report, adds a line only
where rank 0's line does not say it all: another rank's error, or a rank that ended without a line of ours (killed by
SIGKILL or the out-of-memory killer, a crash). It exits with the run's exit code.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from typing import Protocol

# main.py's exit code when it stopped because another process of its launch ended first.
PEER_LOST_EXIT = 3
# Exit codes with which a process of ours has said its own line: an error, a lost peer, SIGHUP, SIGINT or SIGTERM.
SPOKEN_EXITS = {2, PEER_LOST_EXIT, 128 + signal.SIGHUP, 128 + signal.SIGINT, 128 + signal.SIGTERM}


class Failure(Protocol):
    """What torch elastic's ``ProcessFailure`` tells of one process."""

    exitcode: int
    message: str | dict


def closing_line(failures: dict[int, Failure]) -> tuple[str | None, int]:
    """The line to add after the processes' own (None where rank 0's says it) and the launcher's exit code.

    Rank 0 has printed its line where it runs on this node. What it cannot know is added: another rank's own error,
    a rank that ended without a line of ours (killed, crashed), or, where rank 0 stopped only because another process
    ended first (exit code ``PEER_LOST_EXIT``), how that one ended."""
    lines = {rank: _recorded_line(failure) for rank, failure in sorted(failures.items())}
    rank_zero_said = 0 in failures and lines[0] is not None
    if rank_zero_said and lines[0].startswith("error:"):
        return None, 2  # its exit code may be the launcher's SIGTERM, landing after the line
    for rank, line in lines.items():
        if line and line.startswith("error:"):
            return f"error: rank {rank}: {line.removeprefix('error: ')}", 2
    for rank, line in lines.items():
        if line is None and failures[rank].exitcode not in SPOKEN_EXITS:
            how = _how_it_ended(failures[rank].exitcode)
            return (
                f"error: rank {rank} {how}, and the launcher stopped the others; what it printed above, if anything, "
                "says why",
                _exit_code(failures[rank].exitcode),
            )
    if rank_zero_said and failures[0].exitcode != PEER_LOST_EXIT:
        return None, _exit_code(failures[0].exitcode)
    for rank, line in lines.items():  # rank 0 stopped for another rank's stop, or runs on another node
        if rank != 0 and line:
            return f"rank {rank}: {line}", _exit_code(failures[rank].exitcode)
    first = min(failures)
    return None, _exit_code(failures[first].exitcode)


def _recorded_line(failure: Failure) -> str | None:
    """The line a process of ours recorded (``caopd.last_line``); None for anything else in the error file."""
    message = failure.message
    return message if isinstance(message, str) and message.startswith(("error:", "stopped")) else None


def _how_it_ended(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"ended with exit code {exitcode}"


def _exit_code(exitcode: int) -> int:
    """A shell's exit code for a process's: 128 + the signal for one killed by a signal."""
    return 128 - exitcode if exitcode < 0 else exitcode


def _quiet_elastic_logs() -> None:
    """torch elastic logs each failure and each signal it sends; the closing line says what matters."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    """Launch as ``accelerate launch`` would, with its flags; the exit code is the run's."""
    import torch.distributed.run  # noqa: F401  (creates the elastic loggers, quieted below)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(argv)
    _quiet_elastic_logs()
    try:
        launch_command(args)
    except ChildFailedError as failed:
        line, code = closing_line(failed.failures)
        if line:
            print(line, file=sys.stderr)
        return code
    except subprocess.CalledProcessError as failed:  # one process (or a launcher of its own): it said its line
        return _exit_code(failed.returncode)
    except SignalException as stop:  # the launcher itself was stopped; its processes said where they stopped
        return 128 + stop.sigval
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What keeps a run from harming another run's files, or from being resumed under other settings, and the one line
it ends with when it is stopped.

- ``RunLock``: one live run per output folder, an operating-system file lock that its holder's end releases; a
  second run into the folder is refused with the holder's pid and host.
- ``run_identity`` / ``identity_problem``: the settings a checkpoint's run was started with are written into every
  checkpoint (``caopd_run.json``); a resume under another model, backbone, task, data, LoRA layout or reward is
  refused with the settings named; another K is allowed with a warning.
- ``stopped_line`` and ``disk_full``: Ctrl-C, SIGTERM, SIGHUP and a full disk end in one line that says where the run
  stopped and how to resume.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from caopd.atomic import write_text_atomically
from caopd.checkpoints import latest_complete

LOCK_NAME = ".caopd_run.lock"  # the operating-system lock (filelock)
HOLDER_NAME = ".caopd_run.json"  # who holds it
IDENTITY_NAME = "caopd_run.json"
# Settings that make a checkpoint's weights, optimizer state or data order meaningless under other values.
MUST_MATCH = (
    "backbone",
    "model",
    "dataset_name",
    "train_data",
    "verifier",
    "tooluse_match",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "teacher_model_kind",
    "rl_reward",
)
MAY_CHANGE = ("num_generations",)  # a resume under another K is sound: P_acc's granularity changes from there on


class RunLockError(RuntimeError):
    """Another live run holds the output folder."""


class RunLock:
    """The output folder's lock, held by the main process of a launch for the duration of the run.

    An operating-system file lock (``filelock``): exclusive however close together two runs start, and released by
    the system when its holder ends, killed or not, so no lock outlives its run and none is guessed stale. Beside it
    a note names the holder (pid, host, start) for the message a second run gets. The other processes of a launch
    take no lock: when the main process is refused, the launcher stops them."""

    def __init__(self, output_dir: str | Path):
        self.folder = Path(output_dir)
        self.path = self.folder / LOCK_NAME
        self.note = self.folder / HOLDER_NAME
        self.created = False
        self._lock: FileLock | None = None

    def acquire(self) -> None:
        """Take the lock, or refuse (``RunLockError``) naming the run that holds it."""
        lock = FileLock(self.path, blocking=False, thread_local=False, fallback_to_soft=False)
        try:
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:
            raise RunLockError(self._in_use()) from None
        except OSError as err:  # the first write into the folder: one that cannot be created or written ends here
            raise RunLockError(
                f"--output_dir {self.folder}: cannot write there ({err.strerror or err}); choose another folder"
            ) from err
        self._lock = lock
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        write_text_atomically(self.note, json.dumps(holder))

    def _in_use(self) -> str:
        try:
            holder = json.loads(self.note.read_text(encoding="utf-8"))
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder["started"]))
            who = f" (pid {holder['pid']} on {holder['host']}, started {started})"
        except (OSError, ValueError, TypeError, KeyError):
            who = ""  # taken an instant ago, its note not yet written
        return f"{self.folder} is in use by another run{who}; wait for it to finish or choose another --output_dir"

    def release(self) -> None:
        """Release the lock (and remove the output folder when this run created it and wrote nothing else there)."""
        if self._lock is None:
            return
        self.note.unlink(missing_ok=True)
        self._lock.release()
        self._lock = None
        if self.created and {path.name for path in self.folder.iterdir()} <= {LOCK_NAME}:
            self.path.unlink(missing_ok=True)
            self.folder.rmdir()


def run_identity(args: Any, model_location: str) -> dict[str, Any]:
    """The settings a resume must keep (``MUST_MATCH``) or may change with a warning (``MAY_CHANGE``)."""
    identity = {name: getattr(args, name, None) for name in (*MUST_MATCH, *MAY_CHANGE) if name != "model"}
    identity["model"] = model_location
    return identity


def identity_problem(checkpoint: str | Path, current: dict[str, Any]) -> tuple[str | None, str | None]:
    """(why this run cannot resume ``checkpoint``, a warning about what changed soundly); None where there is none.
    Checkpoints of versions that did not record their settings are not checked; a record that is there but does not
    read (damaged) refuses the resume, since nothing then shows the settings match."""
    record = Path(checkpoint) / IDENTITY_NAME
    if not record.exists():
        return None, None
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        recorded = err
    if not isinstance(recorded, dict):
        return (
            f"{record} (the settings of the run that wrote {Path(checkpoint).name}) is damaged ({recorded!s:.80}); "
            "resume from another checkpoint, or start a new run"
        ), None
    changed = [name for name in MUST_MATCH if name in recorded and recorded[name] != current.get(name)]
    problem = None
    if changed:
        listed = "; ".join(f"{name}: {recorded[name]!r} then, {current.get(name)!r} now" for name in changed)
        problem = (
            f"{checkpoint} was written by a run with other settings ({listed}); resume with the same settings, or "
            "start a new run (in another --output_dir, or with --model_name pointing at a checkpoint's model)"
        )
    soft = [name for name in MAY_CHANGE if name in recorded and recorded[name] != current.get(name)]
    warning = None
    if soft:
        warning = "; ".join(f"{name} {recorded[name]} -> {current.get(name)}" for name in soft)
        warning = f"resuming {checkpoint} with {warning} (sound: P_acc's granularity changes from here on)"
    return problem, warning


# What torch.save's zip writer says when a write comes up short (it drops the errno of the full disk beneath).
TORCH_SHORT_WRITES = ("unexpected pos", "PytorchStreamWriter failed writing file", "file write failed")


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk or an exhausted quota; torch.save's short writes count."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "StorageFull" in str(error):
            return True
        if isinstance(error, RuntimeError) and any(sign in str(error) for sign in TORCH_SHORT_WRITES):
            return True
        error = error.__cause__ or error.__context__
    return False


# How a collective ends when another process of the launch has gone: gloo's TCP transport, NCCL's error, a store.
PEER_LOST_SIGNS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited")


def peer_lost(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process of the launch has ended (killed,
    stopped or failed): this process then stops too, with a line, instead of a communication traceback."""
    import torch.distributed

    if isinstance(error, torch.distributed.DistBackendError):
        return True
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in PEER_LOST_SIGNS)


def where_to_resume(output_dir: str | Path) -> str:
    """The resume advice: the newest complete checkpoint, or that there is none yet."""
    latest, _ = latest_complete(output_dir) if Path(output_dir).is_dir() else (None, [])
    if latest is None:
        return "no complete checkpoint was written yet: start the run again"
    return f"the newest complete checkpoint is {latest.name}: resume with --resume_from_checkpoint latest"


# Signals that stop a run with its one stop line: Ctrl-C, a scheduler's stop, a closed terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signal_handlers_kept() -> Iterator[None]:
    """Whatever a stop changes (``ignore_further_interrupts``), the handlers of SIGINT and STOP_SIGNALS before are
    back afterwards: an entry point called in-process (tests, notebooks) leaves its caller's handlers as they were."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            with contextlib.suppress(ValueError):
                signal.signal(signum, handler)


def ignore_further_interrupts() -> None:
    """Once a stop is under way, a second Ctrl-C (or SIGTERM) waits for it instead of raising in its clean-up."""
    for signum in (signal.SIGINT, *STOP_SIGNALS):
        with contextlib.suppress(ValueError):  # not the main thread: nothing to change
            signal.signal(signum, signal.SIG_IGN)


def stopped_line(cause: str, step: int | None, output_dir: str | Path) -> str:
    """The one line a stopped run ends with."""
    at = f" at step {step}" if step is not None else ""
    return f"stopped by {cause}{at}; {where_to_resume(output_dir)}"

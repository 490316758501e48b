"""What keeps runs from harming each other's files: the output folder's lock, the settings a resume must keep, whole
output sets with the user's permissions, and the one line a stopped or disk-full run ends with."""

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from caopd.atomic import write_set_atomically, write_text_atomically
from caopd.checkpoints import write_marker
from caopd.run_guard import (
    IDENTITY_NAME,
    LOCK_NAME,
    RunLock,
    RunLockError,
    disk_full,
    identity_problem,
    stopped_line,
)


def _lock_file(folder, pid: int, launch: str = "someone else") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": socket.gethostname(), "launch": launch, "started": 0}
    (folder / LOCK_NAME).write_text(json.dumps(holder))


def test_a_live_run_holds_the_folder_and_a_dead_one_does_not(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_file(tmp_path, sleeper.pid)
        with pytest.raises(RunLockError, match=rf"in use by another run \(pid {sleeper.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # the run that held it died: its lock is stale and taken over
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    RunLock(tmp_path).check()  # the same launch (this process) is not refused by its own lock
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists() and tmp_path.is_dir()  # the folder existed before: kept


def test_a_run_that_wrote_nothing_leaves_no_folder_behind(tmp_path):
    lock = RunLock(tmp_path / "new")
    lock.acquire()
    lock.release()
    assert not (tmp_path / "new").exists()


def test_the_processes_of_one_launch_share_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "node0")
    monkeypatch.setenv("MASTER_PORT", "29500")
    RunLock(tmp_path).acquire()  # rank 0
    RunLock(tmp_path).check()  # rank 1 of the same launch
    monkeypatch.setenv("MASTER_PORT", "29501")  # another launch into the same folder
    lock = RunLock(tmp_path)
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["launch"] != lock.launch and holder["pid"] == os.getpid()
    with pytest.raises(RunLockError, match="in use by another run"):
        lock.check()


def _checkpoint(folder, recorded: dict | None):
    folder.mkdir(parents=True)
    if recorded is not None:
        (folder / IDENTITY_NAME).write_text(json.dumps(recorded))
    write_marker(folder, 1)
    return folder


def test_resume_settings_that_must_match_are_named_and_k_may_change(tmp_path):
    recorded = {"model": "m", "backbone": "sdft", "dataset_name": "tooluse", "use_peft": True, "lora_r": 16}
    recorded["num_generations"] = 8
    checkpoint = _checkpoint(tmp_path / "checkpoint-1", recorded)
    assert identity_problem(checkpoint, dict(recorded)) == (None, None)
    problem, _ = identity_problem(checkpoint, {**recorded, "lora_r": 32, "dataset_name": "science"})
    assert "dataset_name: 'tooluse' then, 'science' now; lora_r: 16 then, 32 now" in problem
    problem, warning = identity_problem(checkpoint, {**recorded, "num_generations": 4})
    assert problem is None and "num_generations 8 -> 4" in warning
    older = _checkpoint(tmp_path / "checkpoint-2", None)  # written before settings were recorded: not checked
    assert identity_problem(older, {"model": "other"}) == (None, None)
    for garbage in ("x" * 40, "[1, 2]"):  # a damaged record (same size garbage passes the completion marker)
        (checkpoint / IDENTITY_NAME).write_text(garbage)
        problem, _ = identity_problem(checkpoint, {**recorded, "backbone": "grpo"})
        assert "caopd_run.json (the settings of the run that wrote checkpoint-1) is damaged" in problem


def test_a_stopped_run_says_where_to_resume(tmp_path):
    assert stopped_line("SIGTERM", None, tmp_path) == (
        "stopped by SIGTERM; no complete checkpoint was written yet: start the run again"
    )
    _checkpoint(tmp_path / "checkpoint-4", {})
    (tmp_path / "checkpoint-6").mkdir()  # cut short: not offered
    assert stopped_line("SIGINT", 5, tmp_path) == (
        "stopped by SIGINT at step 5; the newest complete checkpoint is checkpoint-4: resume with "
        "--resume_from_checkpoint latest"
    )


def test_a_full_disk_is_recognised_through_the_errors_that_wrap_it():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("safetensors could not write") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not disk_full(OSError(errno.ENOENT, "No such file"))
    if Path("/dev/full").exists():  # every write there fails as on a full disk: torch.save says "unexpected pos"
        with pytest.raises(RuntimeError) as short_write:
            torch.save({"w": torch.zeros(100_000)}, "/dev/full")
        assert disk_full(short_write.value)


def test_outputs_get_the_users_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644


def test_a_set_of_outputs_is_replaced_together_or_not_at_all(tmp_path):
    (tmp_path / "inference.json").write_text("old inference")
    (tmp_path / "metrics.json").write_text("old metrics")

    def full_disk(_stream):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_set_atomically(
            {
                tmp_path / "inference.json": (lambda stream: stream.write("new inference"), "w"),
                tmp_path / "metrics.json": (full_disk, "w"),
            }
        )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inference.json", "metrics.json"]  # no temporaries
    assert (tmp_path / "inference.json").read_text() == "old inference"
    assert (tmp_path / "metrics.json").read_text() == "old metrics"


def test_a_second_interrupt_during_the_stop_is_ignored_and_handlers_come_back():
    import signal

    from caopd.run_guard import ignore_further_interrupts, signal_handlers_kept

    before = signal.getsignal(signal.SIGINT)
    with signal_handlers_kept():
        ignore_further_interrupts()
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while the first stop cleans up: nothing raised
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before

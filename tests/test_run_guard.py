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
    HOLDER_NAME,
    IDENTITY_NAME,
    RunLock,
    RunLockError,
    disk_full,
    identity_problem,
    stopped_line,
)

HOLD = """
import sys, time
from pathlib import Path
from caopd.run_guard import RunLock, RunLockError
folder, go, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
lock = RunLock(folder)  # kept: the lock is the open file, closed when the object goes
try:
    lock.acquire()
except RunLockError as err:
    print("refused:", err, flush=True)
    sys.exit(0)
print("held", flush=True)
time.sleep(seconds)
"""


def _holders(folder, count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` processes that try to take ``folder``'s lock at the same instant (when ``folder/../go`` appears)."""
    go = folder.parent / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-c", HOLD, str(folder), str(go), str(seconds)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(count)]
    assert [process.stdout.readline().strip() for process in processes] == ["ready"] * count  # imports done
    go.touch()
    return processes


def test_runs_started_at_the_same_instant_get_the_lock_once(tmp_path):
    processes = _holders(tmp_path / "run", 4, seconds=3)
    lines = [process.communicate(timeout=300)[0].strip() for process in processes]
    assert sorted(line.split(":")[0] for line in lines) == ["held", "refused", "refused", "refused"]


def test_the_lock_names_its_holder_and_ends_with_it_however_it_ends(tmp_path):
    (holder,) = _holders(tmp_path / "run", 1, seconds=120)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLockError, match=rf"in use by another run \(pid {holder.pid} on {socket.gethostname()}, "):
        RunLock(tmp_path / "run").acquire()
    holder.kill()  # SIGKILL: no clean-up ran; the system released its lock
    holder.wait()
    lock = RunLock(tmp_path / "run")
    lock.acquire()
    assert json.loads((tmp_path / "run" / HOLDER_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run" / HOLDER_NAME).exists() and (tmp_path / "run").is_dir()  # not created by it: kept


def test_a_run_that_wrote_nothing_leaves_no_folder_behind(tmp_path):
    lock = RunLock(tmp_path / "new")
    lock.acquire()
    lock.release()
    assert not (tmp_path / "new").exists()


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


def test_a_written_file_reaches_the_disk_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    """Durable writes: fsync the temporary, rename it over the target, fsync the folder (what each fsync touched
    is read from /proc)."""
    events = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(handle):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{handle}"))))
        fsync(handle)

    def recorded_replace(source, target):
        events.append(("replace", Path(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    write_text_atomically(tmp_path / "metrics.json", "{}")
    (kind, temporary), *rest = events
    assert kind == "fsync" and temporary.parent == tmp_path and temporary.name.startswith(".metrics.json.")
    assert rest == [("replace", tmp_path / "metrics.json"), ("fsync", tmp_path)]


def test_a_second_interrupt_during_the_stop_is_ignored_and_handlers_come_back():
    import signal

    from caopd.run_guard import ignore_further_interrupts, signal_handlers_kept

    before = signal.getsignal(signal.SIGINT)
    with signal_handlers_kept():
        ignore_further_interrupts()
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while the first stop cleans up: nothing raised
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before

"""A multi-process launch ends in one line: each process says its line once (rank 0 prints, every rank records it
for torch elastic), and ``python -m caopd.launch`` adds only what rank 0 could not know, in place of torch elastic's
report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from caopd.checkpoints import MARKER
from caopd.last_line import end_with
from caopd.launch import PEER_LOST_EXIT, closing_line

ROOT = Path(__file__).resolve().parents[1]
STOP = "stopped by SIGTERM at step 3; resume with --resume_from_checkpoint latest"


def _failure(exitcode: int, message: str = "") -> SimpleNamespace:
    return SimpleNamespace(exitcode=exitcode, message=message)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        # rank 0's own error stands alone, whatever the others did
        ({0: _failure(-15, "error: bad flag"), 1: _failure(2, "error: bad flag")}, (None, 2)),
        # rank 0 stopped (by the launcher) after rank 1's own error: rank 1's error is named
        ({0: _failure(143, STOP), 1: _failure(2, "error: disk of node 2")}, ("error: rank 1: disk of node 2", 2)),
        # a rank killed without a word: named, with its exit code
        ({0: _failure(PEER_LOST_EXIT, STOP), 1: _failure(-9)}, ("error: rank 1 was killed by SIGKILL", 137)),
        # a rank that crashed with a traceback (exit 1): named
        ({1: _failure(1, {"message": "RuntimeError: x"})}, ("error: rank 1 ended with exit code 1", 1)),
        # everyone stopped by a scheduler's SIGTERM: rank 0's line says it
        ({0: _failure(143, STOP), 1: _failure(143, STOP)}, (None, 143)),
        # rank 0 stopped only because rank 1 was stopped: rank 1's stop is named
        ({0: _failure(PEER_LOST_EXIT, STOP), 1: _failure(143, STOP)}, (f"rank 1: {STOP}", 143)),
        # another node's launcher, without rank 0: its lowest rank's line
        ({8: _failure(143, STOP), 9: _failure(143, STOP)}, (f"rank 8: {STOP}", 143)),
    ],
    ids=["rank0-error", "other-error", "killed", "crashed", "all-stopped", "peer-stopped", "other-node"],
)
def test_the_launcher_adds_only_what_rank_zero_could_not_say(failures, expected):
    line, code = closing_line(failures)
    assert code == expected[1]
    assert (line is None) if expected[0] is None else line.startswith(expected[0])


@pytest.mark.parametrize("rank", ["0", "1"])
def test_each_rank_records_its_line_and_only_rank_zero_prints_it(rank, tmp_path, monkeypatch, capsys):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    end_with("error: the same on every rank")
    assert capsys.readouterr().err == ("error: the same on every rank\n" if rank == "0" else "")
    assert json.loads(error_file.read_text())["message"] == "error: the same on every rank"
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")  # no launcher to read a record: every rank prints its own
    end_with("error: only here")
    assert capsys.readouterr().err == "error: only here\n"


def _launch(tmp_path: Path, *flags: str) -> subprocess.Popen:
    """``python -m caopd.launch`` with two gloo processes on the CPU, each marked for _pid_of_rank."""
    command = [sys.executable, "-m", "caopd.launch", "--main_process_port", "0", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "main.py", *flags]
    env = {**os.environ, "CAOPD_TEST_LAUNCH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _pid_of_rank(tmp_path: Path, rank: int) -> int:
    mark, wanted = f"CAOPD_TEST_LAUNCH={tmp_path}".encode(), f"RANK={rank}".encode()
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if mark in env and wanted in env and proc.name.isdigit():
            return int(proc.name)
    raise AssertionError(f"no process of rank {rank}")


def _last_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error:", "stopped", "rank "))]


@pytest.mark.slow
def test_a_bad_flag_on_two_processes_is_one_line(tmp_path):
    launch = _launch(tmp_path, "--output_dir", str(tmp_path / "run"), "--no_wandb", "--max_steps", "many")
    _, stderr = launch.communicate(timeout=300)
    assert launch.returncode == 2, stderr
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr
    assert _last_lines(stderr) == ["error: argument --max_steps: invalid int value: 'many'"], stderr
    assert stderr.count("usage:") == 1


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes through /proc")
def test_one_rank_killed_stops_the_other_in_bounded_time_with_a_line(tmp_path):
    from tiny_model import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny")
    run = tmp_path / "run"
    flags = ["--output_dir", str(run), "--no_wandb", "--model_name", str(tiny), "--dataset_name", "arithmetic"]
    flags += ["--max_steps", "500", "--num_prompts_per_batch", "1", "--num_generations", "2", "--save_steps", "1"]
    flags += ["--per_device_train_batch_size", "1", "--max_completion_length", "16", "--max_prompt_length", "512"]
    launch = _launch(tmp_path, *flags)
    deadline = time.monotonic() + 240
    while not (run / "checkpoint-1" / MARKER).is_file() and time.monotonic() < deadline and launch.poll() is None:
        time.sleep(0.5)
    assert launch.poll() is None, launch.communicate()[1]
    os.kill(_pid_of_rank(tmp_path, 1), signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launch.communicate(timeout=120)
    assert time.monotonic() - killed < 60  # the other rank does not wait out a collective's timeout
    assert launch.returncode == 128 + signal.SIGKILL
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr
    lines = _last_lines(stderr)
    # Rank 0 stops at its next collective, or at the launcher's SIGTERM where that comes first (it may be between
    # collectives: generating, saving). Either way it says where to resume, and the launcher adds what happened.
    assert lines[0].startswith(
        ("stopped by the loss of another process of this run at step ", "stopped by SIGTERM at step ")
    ), stderr
    assert lines[0].endswith("resume with --resume_from_checkpoint latest"), stderr
    assert lines[1].startswith("error: rank 1 was killed by SIGKILL"), stderr
    assert len(lines) == 2

"""A run killed at any stage of a checkpoint write resumes from the newest complete checkpoint to the same final
state as a run never killed, or is refused in one line; the rollout log holds every step once."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, accelerate_launch
from helpers import assert_lock_released
from safetensors.torch import load_file

# A kill after the marker (a complete checkpoint, then death) is the stop-signal test below, resume included.
STAGES = ("optimizer_written", "trainer_saved", "teacher_half", "before_marker")
SINGLE = ["plain"]  # one process, no launcher
TWO = ["--multi_gpu", "--num_processes", "2"]


def _flags(model, output, per_device):
    flags = ["--model_name", str(model), "--dataset_name", "arithmetic", "--output_dir", str(output), "--no_wandb"]
    flags += ["--max_steps", "3", "--save_steps", "1", "--num_prompts_per_batch", "1", "--num_generations", "2"]
    flags += ["--per_device_train_batch_size", str(per_device), "--max_completion_length", "16"]
    return [*flags, "--max_prompt_length", "512", "--warmup_steps", "0", "--learning_rate", "1e-3", "--save_rollouts"]


def _launch(processes, script, *argv, env=None):
    """``script`` in one plain process (its own exit code and stderr), or under ``accelerate launch``."""
    command = [sys.executable, str(script), *map(str, argv)]
    if processes is not SINGLE:
        command = [*accelerate_launch(*processes), *command[1:]]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **(env or {})}
    )


def _digest(path) -> str:
    tensors = load_file(str(path))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].float().numpy().tobytes())
    return digest.hexdigest()


def _final_state(output) -> dict:
    rollouts = []
    for file in sorted((output / "rollouts").glob("rank*.jsonl")):
        rollouts += [(row["step"], row["uid"], row["completion"]) for row in map(json.loads, file.open())]
    return {
        "student": _digest(output / "model.safetensors"),
        "teacher": _digest(output / "checkpoint-3" / "teacher" / "model.safetensors"),
        "rollouts": sorted(rollouts),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def never_killed(tmp_path_factory, tiny):
    states = {}
    for name, processes, per_device in (("one", SINGLE, 2), ("two", TWO, 1)):
        output = tmp_path_factory.mktemp(f"uninterrupted_{name}")
        finished = _launch(processes, ROOT / "main.py", *_flags(tiny, output, per_device))
        assert finished.returncode == 0, finished.stderr[-3000:]
        states[name] = _final_state(output)
    assert states["one"]["rollouts"] and [step for step, _, _ in states["one"]["rollouts"]] == [0, 0, 1, 1, 2, 2]
    return states


def _kill_then_resume(tiny, output, stage, step, processes, per_device):
    killed = _launch(processes, ROOT / "tests" / "kill_train.py", stage, step, *_flags(tiny, output, per_device))
    assert killed.returncode != 0 and not (output / "model.safetensors").exists()  # it died before finishing
    return _launch(processes, ROOT / "main.py", *_flags(tiny, output, per_device), "--resume_from_checkpoint", "latest")


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_killed_while_writing_a_checkpoint_resumes_to_the_same_final_state(tmp_path, tiny, never_killed, stage):
    resumed = _kill_then_resume(tiny, tmp_path, stage, 2, SINGLE, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "latest passes over checkpoint-2: " in resumed.stderr  # named, with its reason, in one warning line
    assert _final_state(tmp_path) == never_killed["one"]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130), ("SIGHUP", 129)])
def test_a_stop_signal_ends_in_one_line_saying_where_to_resume(tmp_path, tiny, never_killed, name, code):
    stopped = _launch(
        SINGLE,
        ROOT / "tests" / "kill_train.py",
        "after_marker",
        2,
        *_flags(tiny, tmp_path, 2),
        env={"KILL_SIGNAL": name},
    )
    assert stopped.returncode == code and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"stopped by {name} at step 2; the newest complete checkpoint is checkpoint-2: resume with "
        "--resume_from_checkpoint latest"
    )
    assert_lock_released(tmp_path)  # the lock goes with the run
    if name == "SIGTERM":
        resumed = _launch(SINGLE, ROOT / "main.py", *_flags(tiny, tmp_path, 2), "--resume_from_checkpoint", "latest")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert _final_state(tmp_path) == never_killed["one"]


@pytest.mark.slow
def test_two_processes_killed_before_the_marker_resume_to_the_same_final_state(tmp_path, tiny, never_killed):
    resumed = _kill_then_resume(tiny, tmp_path, "before_marker", 2, TWO, 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _final_state(tmp_path) == never_killed["two"]


@pytest.mark.slow
def test_sdpo_killed_while_writing_its_teacher_resumes_to_the_same_final_state(tmp_path, tiny):
    sdpo = ["--backbone", "sdpo", "--distillation_weight", "0.5"]
    uninterrupted = tmp_path / "uninterrupted"
    finished = _launch(SINGLE, ROOT / "main.py", *_flags(tiny, uninterrupted, 2), *sdpo)
    assert finished.returncode == 0, finished.stderr[-3000:]
    output = tmp_path / "killed"
    killed = _launch(SINGLE, ROOT / "tests" / "kill_train.py", "teacher_half", 2, *_flags(tiny, output, 2), *sdpo)
    assert killed.returncode != 0 and not (output / "model.safetensors").exists()
    resumed = _launch(SINGLE, ROOT / "main.py", *_flags(tiny, output, 2), *sdpo, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _final_state(output) == _final_state(uninterrupted)


@pytest.mark.slow
def test_killed_while_writing_the_first_checkpoint_is_refused_in_one_line(tmp_path, tiny):
    resumed = _kill_then_resume(tiny, tmp_path, "teacher_half", 1, SINGLE, 2)
    assert resumed.returncode == 2
    last = resumed.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: --resume_from_checkpoint latest: no complete checkpoint-* folder")
        and "1 incomplete" in last
    )
    explicit = _launch(
        SINGLE, ROOT / "main.py", *_flags(tiny, tmp_path, 2), "--resume_from_checkpoint", tmp_path / "checkpoint-1"
    )
    assert explicit.returncode == 2 and "cannot resume from it: it has no caopd_complete.json" in explicit.stderr
    assert "Traceback" not in resumed.stderr + explicit.stderr


@pytest.mark.slow
def test_a_damaged_teacher_in_a_complete_checkpoint_is_skipped_or_refused(tmp_path, tiny):
    finished = _launch(SINGLE, ROOT / "main.py", *_flags(tiny, tmp_path, 2))
    assert finished.returncode == 0, finished.stderr[-3000:]
    weights = tmp_path / "checkpoint-3" / "teacher" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # the truncated teacher
    from caopd.checkpoints import latest_complete

    latest, skipped = latest_complete(tmp_path)
    assert latest.name == "checkpoint-2" and [path.name for path in skipped] == ["checkpoint-3"]
    explicit = _launch(
        SINGLE, ROOT / "main.py", *_flags(tiny, tmp_path, 2), "--resume_from_checkpoint", tmp_path / "checkpoint-3"
    )
    last = explicit.stderr.strip().splitlines()[-1]
    assert explicit.returncode == 2 and "teacher/model.safetensors has" in last and "were written" in last

"""The benchmark and check scripts a user runs: they run, and what they print is computed from what they measure."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_memory_measures_a_step_of_the_requested_length():
    finished = _run("bench/memory.py", "--measure", "caopd", "32")
    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert result["arm"] == "caopd" and result["vocab"] == 49152 and result["element_bytes"] == 2
    assert 28 <= result["completion_tokens"] <= 32  # forced length minus at most a few unused reserved tokens
    assert result["step_mib"] > 32 * 49152 * 2 / 2**20  # at least one bf16 logits row per completion token


def test_memory_extrapolation_scales_the_measured_rows():
    sys.path.insert(0, str(ROOT / "bench"))
    import memory

    rows = dict((name, gib) for name, gib, _ in memory.paper_scale_rows(5.0))
    one_tensor = rows["of which one [8192 x 151,936] bf16 tensor"]
    assert one_tensor == pytest.approx(8192 * 151_936 * 2 / 2**30)
    assert rows["logits and loss temporaries (student + teacher)"] == pytest.approx(5 * one_tensor)
    assert memory.slope([(1, 3.0), (2, 5.0), (4, 9.0)]) == pytest.approx(2.0)


@pytest.mark.slow
def test_overhead_times_alternating_arms(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    finished = _run(
        "bench/overhead.py", "--pairs", "1", "--model_name", str(model), "--output_dir", str(tmp_path / "o")
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "step-time ratio CaOPD / SDFT:" in finished.stdout
    assert "% of the CaOPD step" in finished.stdout


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("bench/memory.py", ["--length", "4"], "--length must be at least 16"),
        ("bench/overhead.py", ["--pairs", "0"], "--pairs must be at least 1"),
    ],
)
def test_bench_flags_out_of_range(script, argv, message):
    finished = _run(script, *argv)
    assert finished.returncode == 2 and message in finished.stderr


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_checks(tmp_path):
    finished = _run("scripts/gpu_check.py", "--cpu", "--work_dir", str(tmp_path))
    assert finished.returncode == 0, finished.stdout[-3000:]
    summary = finished.stdout[finished.stdout.index("[gpu_check] summary") :]
    assert summary.count("PASS") == 2 and summary.count("SKIP") == 2 and "FAIL" not in summary
    assert (tmp_path / "transformers" / "checkpoint-3" / "teacher").is_dir()


def test_gpu_check_refuses_a_machine_without_a_gpu():
    finished = _run("scripts/gpu_check.py")
    assert finished.returncode == 2 and "error: no CUDA GPU visible" in finished.stderr

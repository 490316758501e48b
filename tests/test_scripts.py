"""The run scripts the documents give, each run end to end in its quickest mode, and what they print checked against
what they computed. GPU-only launches (ZeRO-3 on 8 GPUs, a vLLM server, several nodes) run as DRY_RUN=1: the script
builds its command as it would on the GPU machine, and main.py's own parser accepts every flag of it."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.launch import launch_command_parser
from conftest import ROOT, SHARED_DATA, covers
from tiny_model import save_tiny_model

from caopd.cli import parse_args
from caopd.flag_validation import gradient_accumulation_steps
from caopd.held_out import read_history

FIXTURES = ROOT / "tests" / "fixtures"
CPU_ACCELERATE_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
num_processes: 1
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
main_training_function: main
"""


def _bash(script: str, env: dict[str, str], *argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
    environment = {**os.environ, "REPORT_TO": "none", **env}
    return subprocess.run(
        ["bash", script, *argv], capture_output=True, text=True, cwd=ROOT, env=environment, timeout=timeout
    )


def _launched(stdout: str, prefix: str) -> list[str]:
    """The command a script printed after ``prefix`` (shell-quoted), split into words."""
    line = next(line for line in stdout.splitlines() if line.startswith(prefix))
    return shlex.split(line[len(prefix) :])


def _main_args(command: list[str]):
    return parse_args(command[command.index("main.py") + 1 :])


def assert_logged_p_acc_is_the_rollouts(output_dir: Path) -> float:
    """The P_acc the run logged is the mean over questions of correct / K in its rollout log."""
    rows = [json.loads(line) for line in (output_dir / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    groups: dict[int, list[bool]] = {}
    for row in rows:
        groups.setdefault(row["uid"], []).append(row["correct"])
    expected = sum(sum(group) / len(group) for group in groups.values()) / len(groups)
    state = json.loads(next(output_dir.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["log_history"][0]["caopd/p_acc_mean"] == pytest.approx(expected)
    return expected


@pytest.mark.slow
@covers("scripts/run_cpu_demo.sh")
@pytest.mark.parametrize("backbone", ["sdft", "sdpo"])
def test_cpu_demo_script_trains_one_step(tmp_path, backbone):
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "demo"
    env = {"SKIP_SETUP": "1", "MAX_STEPS": "1", "SAVE_STEPS": "1", "OUTPUT_DIR": str(out), "BACKBONE": backbone}
    held_out = ["--eval_steps", "1", "--eval_split_size", "4"]  # 4 arithmetic questions of its validation split
    finished = _bash("scripts/run_cpu_demo.sh", env, "--model_name", str(model), "--save_rollouts", *held_out)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "[run_cpu_demo] python -m caopd.launch" in finished.stdout
    assert_logged_p_acc_is_the_rollouts(out)
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-1" / "teacher").is_dir()
    assert f"backbone: {backbone}" in (out / "caopd_config.yaml").read_text()
    assert [(entry["step"], entry["n_samples"]) for entry in read_history(out)] == [(1, 4)]
    assert "## Held-out calibration while training" in (out / "README.md").read_text()


@pytest.mark.slow
@covers("scripts/run_tooluse.sh", "scripts/paper_run.sh")
def test_paper_run_script_trains_on_the_cpu_with_its_settings(tmp_path):
    """The paper's script as written, with a CPU accelerate config, a tiny model and one short step."""
    config = tmp_path / "cpu.yaml"
    config.write_text(CPU_ACCELERATE_CONFIG)
    out = tmp_path / "run"
    env = {
        "MODEL": str(save_tiny_model(tmp_path / "tiny")),
        "TRAIN_DATA": str(FIXTURES / "tooluse_rows.jsonl"),
        "NUM_GPUS": "1",
        "ACCELERATE_CONFIG": str(config),
        "OUTPUT_DIR": str(out),
    }
    argv = ["--max_steps", "1", "--num_prompts_per_batch", "1", "--num_generations", "2", "--save_steps", "1"]
    argv += ["--per_device_train_batch_size", "2", "--max_completion_length", "24", "--save_rollouts"]
    finished = _bash("scripts/run_tooluse.sh", env, *argv)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_logged_p_acc_is_the_rollouts(out)
    recorded = (out / "caopd_config.yaml").read_text()
    for setting in ("learning_rate: 2.0e-05", "gradient_checkpointing: true", "max_prompt_length: 2048"):
        assert setting in recorded


@covers(
    "scripts/paper_run.sh",
    "scripts/run_science.sh",
    "scripts/run_tooluse_sdft.sh",
    "scripts/run_science_sdft.sh",
    "scripts/run_multinode.sh",
    "scripts/run_tooluse_sdpo.sh",
    "scripts/run_science_sdpo.sh",
    "scripts/run_tooluse_sdpo_baseline.sh",
    "scripts/run_science_sdpo_baseline.sh",
)
@pytest.mark.parametrize(
    ("script", "env", "expected"),
    [
        ("scripts/paper_run.sh", {"TASK": "science"}, {"dataset_name": "science", "learning_rate": 1e-5}),
        ("scripts/run_science.sh", {}, {"dataset_name": "science", "empirical_calibration": True}),
        ("scripts/run_tooluse_sdft.sh", {}, {"dataset_name": "tooluse", "empirical_calibration": False}),
        ("scripts/run_science_sdft.sh", {}, {"dataset_name": "science", "empirical_calibration": False}),
        ("scripts/run_multinode.sh", {"NODE_RANK": "1", "MASTER_ADDR": "node0"}, {"dataset_name": "tooluse"}),
        ("scripts/run_tooluse_sdpo.sh", {}, {"backbone": "sdpo", "empirical_calibration": True}),
        ("scripts/run_science_sdpo.sh", {}, {"backbone": "sdpo", "dataset_name": "science", "learning_rate": 1e-5}),
        ("scripts/run_tooluse_sdpo_baseline.sh", {}, {"backbone": "sdpo", "empirical_calibration": False}),
        ("scripts/run_science_sdpo_baseline.sh", {}, {"backbone": "sdpo", "distillation_mode": "topk_logits"}),
    ],
)
def test_gpu_run_scripts_build_a_command_main_accepts(script, env, expected):
    """Each GPU script's command (DRY_RUN=1), read back by main.py's parser: the paper's settings, and a question
    batch that divides over the processes it launches."""
    finished = _bash(script, {"DRY_RUN": "1", "NUM_GPUS": "8", **env}, "--max_steps", "5")
    assert finished.returncode == 0, finished.stderr[-2000:]
    command = _launched(finished.stdout, "[paper_run] ")
    assert command[:3] == ["python", "-m", "caopd.launch"]  # accelerate launch's flags, ending in the run's own line
    launch_command_parser().parse_args(command[3:])
    args = _main_args(command)
    for name, value in expected.items():
        assert getattr(args, name) == value
    assert (args.num_generations, args.num_prompts_per_batch, args.max_completion_length) == (8, 32, 8192)
    assert args.gradient_checkpointing and args.max_steps == 5
    processes = int(command[command.index("--num_processes") + 1])
    assert gradient_accumulation_steps(args, processes) >= 1
    if script == "scripts/run_multinode.sh":
        assert processes == 16 and command[command.index("--machine_rank") + 1] == "1"
        assert command[command.index("--main_process_ip") + 1] == "node0"


@covers("scripts/run_vllm_server.sh")
@pytest.mark.parametrize(
    ("extra", "config", "context"),
    [
        ([], None, 2048 + 8192),
        (["--self_consistency"], None, (2048 + 8192 + 128) + 8192),  # greedy references from teacher prompts
        ([], "max_prompt_length: 300\nmax_completion_length: 100\nmodel_name: m\n", 400),  # a CONFIG's lengths
    ],
)
def test_vllm_server_script_sizes_the_server_for_what_the_run_sends(tmp_path, extra, config, context):
    env = {"DRY_RUN": "1", "VLLM_GPUS": "0", "TRAIN_GPUS": "1,2,3,4"}
    if config is not None:
        (tmp_path / "run.yaml").write_text(config)
        env["CONFIG"] = str(tmp_path / "run.yaml")
    finished = _bash("scripts/run_vllm_server.sh", env, "--max_steps", "3", *extra)
    assert finished.returncode == 0, finished.stderr[-2000:]
    server = _launched(finished.stdout, "[run_vllm_server] server on GPU(s) 0: ")
    training = _launched(finished.stdout, "[run_vllm_server] training on GPU(s) 1,2,3,4: ")
    assert server[:2] == ["vllm", "serve"]
    assert json.loads(server[server.index("--weight-transfer-config") + 1]) == {"backend": "nccl"}
    args = _main_args(training)
    assert args.use_vllm and args.vllm_mode == "server" and args.max_steps == 3
    assert int(server[server.index("--max-model-len") + 1]) == context
    assert gradient_accumulation_steps(args, int(training[training.index("--num_processes") + 1])) >= 1


@pytest.mark.slow
@covers("scripts/gpu_check.sh")
def test_gpu_check_script_runs_its_cpu_checks(tmp_path):
    finished = _bash("scripts/gpu_check.sh", {"GPU_CHECK_CPU": "1", "WORK_DIR": str(tmp_path)})
    assert finished.returncode == 0, finished.stdout[-3000:]
    summary = finished.stdout[finished.stdout.index("[gpu_check] summary") :]
    assert summary.count("PASS") == 4 and summary.count("SKIP") == 3 and "FAIL" not in summary
    assert "[gpu_check] shared prefix, sdpa: relative differences" in finished.stdout
    assert "[gpu_check] chunked loss: relative differences" in finished.stdout
    assert (tmp_path / "transformers" / "checkpoint-3" / "teacher").is_dir()


def test_gpu_check_refuses_a_machine_without_a_gpu():
    finished = subprocess.run([sys.executable, "scripts/gpu_check.py"], capture_output=True, text=True, cwd=ROOT)
    assert finished.returncode == 2 and "error: no CUDA GPU visible" in finished.stderr


@pytest.mark.slow
@covers("scripts/run_baseline_eval.sh")
def test_baseline_eval_script_tabulates_what_it_measured(tmp_path):
    if not (SHARED_DATA / "caopd_eval").is_dir():
        pytest.skip(f"the shared evaluation sets are not at {SHARED_DATA / 'caopd_eval'}")
    out = tmp_path / "baseline"
    env = {"MODEL": str(save_tiny_model(tmp_path / "tiny")), "OUT_DIR": str(out), "TOOLUSE_LIMIT": "2"}
    env |= {"SCIENCE_LIMIT": "2", "TOOLUSE_TOKENS": "8", "SCIENCE_TOKENS": "8"}
    env["RELIABILITY_PNG"] = str(tmp_path / "reliability.png")
    finished = _bash("scripts/run_baseline_eval.sh", env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    table = (out / "baseline.md").read_text()
    for task in ("tooluse", "science"):
        metrics = json.loads((out / task / "metrics.json").read_text())
        assert metrics["n_samples"] == 2
        row = next(line for line in table.splitlines() if line.startswith(f"| {task} "))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1].startswith(f"{metrics['accuracy']:.3f} [") and cells[2].startswith(f"{metrics['ece']:.3f} [")
        assert cells[9].startswith(f"{metrics['aurc']:.3f} [") and cells[-1] == "2"
    assert (tmp_path / "reliability.png").stat().st_size > 0

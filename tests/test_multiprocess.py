"""Two processes: a prompt whose K rollouts are split over them gets the rate of all K, and the shared-prefix
forward updates the weights as the unshared one does."""

import json
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch
from helpers import read_rollouts

from caopd.held_out import CURVE_NAME, read_history

ROOT = Path(__file__).resolve().parents[1]


def _launch_two(script: str, *argv: str) -> None:
    """``tests/<script>`` on two gloo processes; it must exit 0."""
    # accelerate 1.15 spawns CPU processes for `--cpu` only through mpirun; `--multi_gpu` goes through torchrun,
    # which on a machine without GPUs gives gloo processes on the CPU.
    command = [*accelerate_launch("--multi_gpu", "--num_processes", "2"), str(ROOT / "tests" / script), *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One SGD step of ``tests/mp_train.py`` on two gloo processes, with the shared-prefix forward and without, and
    one on whole logits (the others chunk the loss), one on the SDPO backbone and one on GRPO's."""
    out = tmp_path_factory.mktemp("two_processes")
    for forward in ("shared", "unshared"):
        _launch_two("mp_train.py", str(out / forward), forward)
    _launch_two("mp_train.py", str(out / "whole"), "shared", "sdft", "whole")
    _launch_two("mp_train.py", str(out / "sdpo"), "shared", "sdpo")
    _launch_two("mp_train.py", str(out / "grpo"), "shared", "grpo")
    return {name: out / name for name in ("shared", "unshared", "whole", "sdpo", "grpo")}


@pytest.mark.slow
def test_main_leaves_no_process_group_for_interpreter_shutdown(tmp_path):
    """A finished two-process run of main.py frees its DDP wrapper before returning: left to interpreter shutdown,
    destroying the gloo process group it holds can abort a run that had finished (SIGABRT, exit code -6). The run
    evaluates 3 held-out questions x 2 answers: each question is answered by one process, once."""
    from tiny_model import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny")
    flags = ["--model_name", str(tiny), "--dataset_name", "arithmetic", "--output_dir", str(tmp_path / "run")]
    flags += ["--max_steps", "1", "--num_prompts_per_batch", "1", "--num_generations", "2", "--no_wandb"]
    flags += ["--per_device_train_batch_size", "1", "--max_completion_length", "16", "--max_prompt_length", "512"]
    flags += ["--eval_steps", "1", "--eval_split_size", "3", "--num_generations_eval", "2"]
    _launch_two("mp_main_exit.py", str(tmp_path), *flags)
    leftover = [json.loads((tmp_path / f"leftover_ddp_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert leftover == [0, 0]
    (evaluation,) = read_history(tmp_path / "run")
    assert evaluation["step"] == 1 and evaluation["n_samples"] == 6  # rank 1 answered its 1 question, not its pad
    assert (tmp_path / "run" / CURVE_NAME).is_file() and "| 1 | " in (tmp_path / "run" / "README.md").read_text()


def _rlcr_reward_of_its_own_verdict(row: dict) -> bool:
    """RLCR's gated terms from the rollout's verdict and stated confidence; 0.5 x their sum is its reward."""
    terms, correct = row["reward_terms"], float(row["correct"])
    if terms["format"] == 0:
        return terms == {"format": 0.0, "accuracy": 0.0, "brier": 0.0} and row["reward"] == 0.0
    brier = 1.0 - (correct - row["confidence"]) ** 2
    total = 0.5 * (1.0 + correct + brier)
    return terms == pytest.approx({"format": 1.0, "accuracy": correct, "brier": brier}) and row["reward"] == total


@pytest.mark.slow
@pytest.mark.parametrize("forward", ["shared", "unshared", "sdpo", "grpo"])
def test_p_acc_pools_rollouts_split_across_two_processes(runs, forward):
    rows = read_rollouts(runs[forward])
    assert {row["rank"] for row in rows} == {0, 1}
    groups = defaultdict(list)
    for row in rows:
        groups[(row["step"], row["uid"])].append(row)
    assert all(len(group) == 4 for group in groups.values())  # every prompt has its K = 4 rollouts

    split = [group for group in groups.values() if len({row["rank"] for row in group}) == 2]
    assert split, "no prompt had rollouts on both processes: the test set-up no longer exercises the gather"
    for group in groups.values():
        expected = sum(row["correct"] for row in group) / len(group)
        assert all(row["p_acc"] == expected for row in group)
        if forward == "grpo":  # the RL baseline: no rewrite; its RLCR reward from each rollout's own verdict
            assert all(row["target"] == row["completion"] for row in group)
            assert all(_rlcr_reward_of_its_own_verdict(row) for row in group)
        else:
            assert all(row["target"].endswith(f"Confidence: {expected:.2f}") for row in group)


@pytest.mark.slow
def test_the_shared_prefix_forward_updates_weights_as_the_unshared_one_across_two_processes(runs):
    """A rollout group split over two processes: each process shares what it holds of it, and after one SGD step
    (gradients averaged over both) every weight equals that of the run without sharing."""

    def calls(forward: str) -> list[list[bool]]:
        return [json.loads((runs[forward] / f"shared_forwards_rank{rank}.json").read_text()) for rank in (0, 1)]

    assert all(rank_calls and all(rank_calls) for rank_calls in calls("shared"))  # every forward on both shared
    assert calls("unshared") == [[], []]
    _assert_same_weights(runs["shared"], runs["unshared"])


def _assert_same_weights(one: Path, other: Path) -> None:
    from safetensors.torch import load_file

    weights = [load_file(run / "model" / "model.safetensors") for run in (one, other)]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[1].items():
        torch.testing.assert_close(weights[0][name], tensor, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_the_chunked_loss_updates_weights_as_whole_logits_across_two_processes(runs):
    """One SGD step on two processes (gradients averaged over both), the loss over chunks of the hidden states and
    over the whole logits: every weight equal."""

    def modes(run: str) -> list[str]:
        return [json.loads((runs[run] / f"loss_chunking_rank{rank}.json").read_text()) for rank in (0, 1)]

    assert modes("shared") == modes("sdpo") == ["on", "on"] and modes("whole") == ["off (--no-chunked_loss)"] * 2
    _assert_same_weights(runs["shared"], runs["whole"])

"""One CaOPD step through the CLI on the real embedded model (SmolLM2-135M-Instruct) and the built-in task."""

import json

import pytest
from conftest import covers
from transformers import AutoModelForCausalLM

import main
from caopd.confidence import parse_confidence
from caopd.targets import rewrite_completion_text


@pytest.mark.slow
@covers("main.py")
def test_one_caopd_step_on_the_embedded_model(tmp_path):
    output = tmp_path / "run"
    argv = ["--model_name", "smollm2", "--dataset_name", "arithmetic", "--output_dir", str(output), "--no_wandb"]
    argv += ["--max_steps", "1", "--num_prompts_per_batch", "1", "--num_generations", "4"]
    argv += ["--per_device_train_batch_size", "4", "--max_completion_length", "40", "--max_prompt_length", "512"]
    argv += ["--save_rollouts", "--warmup_steps", "0"]
    assert main.main(argv) == 0

    rows = [json.loads(line) for line in (output / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len({row["uid"] for row in rows}) == 1
    p_acc = sum(row["correct"] for row in rows) / 4
    for row in rows:
        assert row["p_acc"] == p_acc
        assert row["target"] == rewrite_completion_text(row["completion"], p_acc)
        assert parse_confidence(row["target"]) == pytest.approx(float(f"{p_acc:.2f}"))
        assert f"The empirical confidence for this question is {p_acc:.2f}." in row["teacher_context"]
    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.config.model_type == "llama"

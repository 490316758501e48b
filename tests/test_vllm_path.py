"""The trainer's vLLM path (colocate and server), run on CPU: TRL's own ``VLLMGeneration`` and ``VLLMClient`` over the
strict stand-ins of ``tests/vllm_standin.py`` (vLLM's sampling checks, its context limit, an engine built from the
saved model, weights loaded by name, the server's HTTP handshake). vLLM itself is never imported.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import trl.experimental.sdft.sdft_trainer as sdft_trainer
from conftest import accelerate_launch
from helpers import (
    TOY_TASK,
    assert_rewritten_with_group_rates,
    capture_batches,
    read_rollouts,
    record_references,
    toy_dataset,
    toy_trainer,
)
from tiny_model import save_tiny_model
from transformers import AutoModelForCausalLM
from vllm_doubles import Engine, StrictSamplingParams, VLLMValidationError
from vllm_standin import FakeVLLMServer, install

import caopd.step
import main
from caopd.held_out import HeldOut
from caopd.prompts import encode_chat_prompts
from caopd.targets import reserved_completion_tokens

ROOT = Path(__file__).resolve().parents[1]
MODES = ("colocate", "server")


@pytest.fixture(autouse=True)
def standin(monkeypatch):
    install(monkeypatch)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return save_tiny_model(tmp_path / "tiny")


@pytest.fixture
def disk_model(model_dir):
    """The student as TRL's vLLM path needs it: loaded from a folder, so vLLM can build its engine from the path."""
    return AutoModelForCausalLM.from_pretrained(model_dir)


def vllm_trainer(model, tokenizer, tmp_path, mode: str, model_dir: Path, server_len: int | None = None, **overrides):
    """A toy trainer on vLLM; in server mode a stand-in server (on the saved model) runs for the test's duration."""
    settings = {"use_vllm": True, "vllm_mode": mode, **overrides}
    if mode == "server":
        server = FakeVLLMServer(str(model_dir), max_model_len=server_len or 4096)
        settings |= {"vllm_server_host": "127.0.0.1", "vllm_server_port": server.port, "vllm_server_timeout": 5}
    trainer = toy_trainer(model, tokenizer, tmp_path / "run", **settings)
    trainer.standin_server = server if mode == "server" else None
    return trainer


def engine_of(trainer) -> Engine:
    if trainer.standin_server is not None:
        return trainer.standin_server.engine
    return trainer.vllm_generation.llm.engine


@pytest.mark.parametrize("mode", MODES)
def test_generation_limit_is_lowered_by_exactly_the_reserved_confidence_tokens(
    disk_model, tokenizer, tmp_path, model_dir, mode
):
    trainer = vllm_trainer(disk_model, tokenizer, tmp_path, mode, model_dir)
    reserve = reserved_completion_tokens(trainer._encode)
    generation = trainer.vllm_generation
    assert generation.mode == mode and generation.max_completion_length == trainer.max_completion_length - reserve
    trainer.train()
    assert generation.calls and all(call.max_tokens == 24 - reserve for call in generation.calls)
    assert generation.syncs >= 1  # rollouts came from synced weights
    if mode == "server":
        (request,) = trainer.standin_server.requests
        assert request["max_tokens"] == 24 - reserve and request["n"] == 4 and request["logprobs"] is None


@pytest.mark.parametrize("backbone", ["sdft", "sdpo"])
@pytest.mark.parametrize("mode", MODES)
def test_vllm_completions_are_rewritten_as_in_the_transformers_path(
    disk_model, tokenizer, tmp_path, model_dir, mode, backbone
):
    trainer = vllm_trainer(disk_model, tokenizer, tmp_path, mode, model_dir, backbone=backbone)
    captured = capture_batches(trainer)
    trainer.train()
    assert_rewritten_with_group_rates(trainer, captured, k=4)
    (call,) = trainer.vllm_generation.calls
    assert call.num_generations == 4 and call.temperature == 1.0
    rows = read_rollouts(tmp_path / "run")
    assert len(rows) == 8 and all(row["target"].endswith(f"Confidence: {row['p_acc']:.2f}") for row in rows)


@pytest.mark.parametrize("mode", MODES)
def test_synced_weights_reach_the_engine_by_name(disk_model, tokenizer, tmp_path, model_dir, mode):
    """After a step the engine holds the student's weights, matched by vLLM's parameter names (TRL's naming)."""
    trainer = vllm_trainer(disk_model, tokenizer, tmp_path, mode, model_dir, max_steps=2, learning_rate=0.05)
    trainer.train()
    engine = engine_of(trainer)
    student = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    assert sorted(set(engine.loaded_names)) == sorted(student)
    # The second step's rollouts were sampled from the weights after the first step; the final step's update has
    # not been synced yet, so the engine trails the student by exactly one optimizer step.
    moved = [name for name, value in engine.model.named_parameters() if not torch.equal(value, student[name])]
    assert moved, "the engine should still hold the weights before the last step"


def test_lora_weights_are_merged_and_named_as_vllm_names_them(disk_model, tokenizer, tmp_path, model_dir):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = vllm_trainer(disk_model, tokenizer, tmp_path, "colocate", model_dir, peft_config=lora)
    trainer.train()
    engine = engine_of(trainer)
    assert engine.loaded_names and not any("lora" in name or "base_model" in name for name in engine.loaded_names)
    with pytest.raises(KeyError, match="no parameter named"):  # a name with PEFT's prefix left in is refused
        engine.load_weights([("base_model.model.model.norm.weight", torch.ones(32))])


def test_the_colocate_engine_is_built_from_the_saved_model(model, tokenizer, tmp_path):
    """TRL builds ``LLM(model=model.name_or_path)``: a student that exists only in memory cannot get an engine."""
    with pytest.raises(ValueError, match="from a model path"):
        toy_trainer(model, tokenizer, tmp_path, use_vllm=True)


@pytest.mark.parametrize("calibrate", [True, False])
def test_rollout_log_probs_are_kept_for_the_sampled_tokens(
    disk_model, tokenizer, tmp_path, model_dir, monkeypatch, calibrate
):
    # Two micro-steps per generation but one accumulation step: TRL then computes rollout log-probs for the
    # importance-sampling correction. Under CaOPD they are kept for the tokens the target still shares with the
    # rollout (tests/test_caopd_step.py checks the ratio); vLLM is asked for none of its own.
    corrections = []
    clip = sdft_trainer.apply_importance_sampling_clipping
    counted = lambda *a, **k: corrections.append(1) or clip(*a, **k)  # noqa: E731
    monkeypatch.setattr(sdft_trainer, "apply_importance_sampling_clipping", counted)  # TRL's whole-logits loss
    monkeypatch.setattr(caopd.step, "apply_importance_sampling_clipping", counted)  # the chunked loss
    trainer = vllm_trainer(
        disk_model,
        tokenizer,
        tmp_path,
        "colocate",
        model_dir,
        per_device_train_batch_size=4,
        steps_per_generation=2,
        max_steps=2,
        empirical_calibration=calibrate,
    )
    captured = capture_batches(trainer)
    trainer.train()
    assert trainer.vllm_generation.logprobs is None  # TRL asks vLLM for no sampling log-probs
    (raw,) = captured["raw"][:1]
    _, batch = captured["final"][0]
    assert "old_per_token_logps" in batch and corrections
    if calibrate:
        sampled = batch["sampled_mask"]
        for row, ids in enumerate(raw):
            kept = int(sampled[row].sum())
            assert batch["completion_ids"][row, :kept].tolist() == ids[:kept]  # the sampled prefix, unchanged
            assert batch["old_per_token_logps"][row, kept:].abs().sum() == 0  # no sampling log-prob past it


@pytest.mark.parametrize("mode", MODES)
def test_self_consistency_references_are_greedy_and_belong_to_their_prompts(
    disk_model, tokenizer, tmp_path, model_dir, mode
):
    trainer = vllm_trainer(disk_model, tokenizer, tmp_path, mode, model_dir, self_consistency=True)
    references = record_references(trainer)
    trainer.train()
    generation = trainer.vllm_generation
    _, call = generation.calls
    assert call.num_generations == 1 and call.temperature == 0.0  # greedy, one completion per prompt
    assert generation.temperature == 1.0  # the rollouts' sampling temperature is restored
    (by_uid,) = references
    assert len(call.prompts) == len(by_uid) == 2

    # Recompute the batch greedily on the engine's weights, and look each prompt's reference up by its own ids.
    greedy = StrictSamplingParams(temperature=0.0, max_tokens=call.max_tokens)
    recomputed = [completions[0][0] for completions in engine_of(trainer).sample(call.prompts, greedy)]  # tokens
    texts = [trainer._decode(trainer._strip_eos(ids)) for ids in recomputed]
    rows = trainer.train_dataset
    for uid, reference in by_uid.items():
        prompt = trainer.teacher_context_builder.select_generation_prompts(
            [rows[uid]["prompt"]], [rows[uid]["privileged_context"]]
        )
        (ids,) = trainer._tokenize_prompts(prompt)
        assert reference == texts[call.prompts.index(ids)]


def test_server_context_is_sized_for_the_teacher_prompts_the_run_sends(disk_model, tokenizer, tmp_path, model_dir):
    """Self-consistency sends teacher prompts, longer than any student prompt: a server sized as the run needs
    (``main.py --print_vllm_max_model_len``) serves them; one sized for student prompts answers 400."""
    flags = ["--output_dir", str(tmp_path), "--max_prompt_length", "48", "--max_completion_length", "24"]
    needed = main.vllm_max_model_len(main.parse_args([*flags, "--self_consistency"]))
    assert needed == (48 + 24 + 128) + 24
    settings = {"self_consistency": True, "max_prompt_length": 48}
    trainer = vllm_trainer(disk_model, tokenizer, tmp_path / "a", "server", model_dir, server_len=needed, **settings)
    trainer.train()
    assert len(trainer.vllm_generation.calls) == 2

    student_only = main.vllm_max_model_len(main.parse_args(flags))
    assert student_only == 48 + 24
    fresh = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = vllm_trainer(fresh, tokenizer, tmp_path / "b", "server", model_dir, server_len=student_only, **settings)
    with pytest.raises(Exception, match=r"400.*maximum context length"):
        trainer.train()


def test_the_standin_refuses_what_vllm_refuses():
    with pytest.raises(VLLMValidationError, match="n must be 1 when using greedy sampling"):
        StrictSamplingParams(n=8, temperature=0.0)
    for bad in ({"temperature": 2.5}, {"top_p": 0.0}, {"top_k": -2}, {"min_p": 1.5}, {"repetition_penalty": 0.0}):
        with pytest.raises(VLLMValidationError):
            StrictSamplingParams(**bad)
    assert not issubclass(VLLMValidationError, ValueError)
    with pytest.raises(TypeError):
        StrictSamplingParams(beam_width=4)  # a setting the stand-in does not model is refused, not dropped


@pytest.mark.slow
def test_server_mode_references_with_uneven_prompts_per_process(tmp_path):
    # Three processes hold 1, 2 and 1 distinct prompts. TRL's server path gives process r the results
    # r*n .. (r+1)*n-1 of the gathered requests, so unequal request counts would hand the middle process
    # another prompt's reference.
    command = accelerate_launch("--multi_gpu", "--num_processes", "3")
    command += [str(ROOT / "tests" / "mp_vllm_server.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]

    per_rank = [json.loads((tmp_path / f"references_rank{rank}.json").read_text()) for rank in range(3)]
    assert [len(references) for references in per_rank] == [1, 2, 1]
    for references in per_rank:
        for uid, text in references.items():
            assert f"Question {uid}: name a colour." in text, f"prompt {uid} got another prompt's reference"


@pytest.mark.parametrize("mode", MODES)
def test_grpo_samples_through_vllm_with_its_log_probs(disk_model, tokenizer, tmp_path, model_dir, mode):
    """The RL baselines on the same vLLM path: TRL's GRPO asks vLLM for the sampled tokens' log-probs (its
    importance-sampling correction), which the stand-in computes as vLLM's processed log-probs."""
    trainer = vllm_trainer(disk_model, tokenizer, tmp_path, mode, model_dir, backbone="grpo", rl_reward="rlcr")
    trainer.train()
    assert trainer.vllm_generation.logprobs == 0 and trainer.vllm_generation.calls
    logged = trainer.state.log_history[0]
    assert {"rewards/format/mean", "rewards/accuracy/mean", "rewards/brier/mean"} <= set(logged)  # RLCR's terms
    assert logged["sampling/sampling_logp_difference/mean"] < 1e-4  # the engine's log-probs are the trainer's
    assert len(read_rollouts(tmp_path / "run")) == 8


@pytest.mark.parametrize("mode", MODES)
def test_held_out_answers_come_from_the_runs_vllm_with_each_questions_copies_as_one_request(
    disk_model, tokenizer, tmp_path, model_dir, mode
):
    """Held-out evaluation samples through TRL's VLLMGeneration, as the rollouts do: 3 questions x 2 answers, each
    question's copies side by side (the server samples them as n = 2 of one prompt), weights synced first."""
    prompt_ids = encode_chat_prompts(tokenizer, list(toy_dataset(3)["prompt"]), enable_thinking=False)
    held_out = HeldOut(toy_dataset(3), prompt_ids, TOY_TASK, "paper", samples=2, batch_size=4)
    trainer = vllm_trainer(disk_model, tokenizer, tmp_path, mode, model_dir, held_out=held_out)
    metrics = trainer.evaluate()
    calls = trainer.vllm_generation.calls
    assert [call.num_generations for call in calls] == [2, 2]  # batches of 4 answers: 2 questions, then 1
    assert [call.prompts for call in calls] == [[p for p in prompt_ids[:2] for _ in "ab"], [prompt_ids[2]] * 2]
    assert metrics["eval_n_samples"] == 6

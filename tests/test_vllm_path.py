"""The trainer's vLLM path (colocate and server), run on CPU through a transformers stand-in for TRL's object.

``tests/vllm_standin.py`` replaces ``trl.generation.vllm_generation.VLLMGeneration``, the class TRL's trainer
builds when ``use_vllm`` is set; vLLM itself is never imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trl.experimental.sdft.sdft_trainer as sdft_trainer
import trl.generation.vllm_generation as vllm_generation
from helpers import (
    assert_rewritten_with_group_rates,
    capture_batches,
    read_rollouts,
    record_references,
    toy_trainer,
)
from vllm_standin import TransformersVLLMGeneration

from caopd.targets import reserved_completion_tokens

ROOT = Path(__file__).resolve().parents[1]
MODES = ("colocate", "server")


@pytest.fixture(autouse=True)
def standin(monkeypatch):
    monkeypatch.setattr(vllm_generation, "VLLMGeneration", TransformersVLLMGeneration)


@pytest.mark.parametrize("mode", MODES)
def test_generation_limit_is_lowered_by_exactly_the_reserved_confidence_tokens(model, tokenizer, tmp_path, mode):
    trainer = toy_trainer(model, tokenizer, tmp_path, use_vllm=True, vllm_mode=mode)
    reserve = reserved_completion_tokens(trainer._encode)
    generation = trainer.vllm_generation
    assert isinstance(generation, TransformersVLLMGeneration) and generation.mode == mode
    assert generation.max_completion_length == trainer.max_completion_length - reserve
    trainer.train()
    assert generation.calls and all(call.max_tokens == 24 - reserve for call in generation.calls)
    assert generation.syncs >= 1  # rollouts came from synced weights


@pytest.mark.parametrize("mode", MODES)
def test_vllm_completions_are_rewritten_as_in_the_transformers_path(model, tokenizer, tmp_path, mode):
    trainer = toy_trainer(model, tokenizer, tmp_path, use_vllm=True, vllm_mode=mode)
    captured = capture_batches(trainer)
    trainer.train()
    assert_rewritten_with_group_rates(trainer, captured, k=4)
    (call,) = trainer.vllm_generation.calls
    assert call.num_generations == 4 and call.temperature == 1.0
    rows = read_rollouts(tmp_path)
    assert len(rows) == 8 and all(row["target"].endswith(f"Confidence: {row['p_acc']:.2f}") for row in rows)


@pytest.mark.parametrize(("calibrate", "expects_logps"), [(True, False), (False, True)])
def test_no_rollout_log_probs_or_importance_sampling_under_caopd(
    model, tokenizer, tmp_path, monkeypatch, calibrate, expects_logps
):
    # Two micro-steps per generation but one accumulation step: TRL then computes rollout log-probs for the
    # importance-sampling correction (the SDFT arm shows it does); CaOPD must neither compute nor use them.
    corrections = []
    clip = sdft_trainer.apply_importance_sampling_clipping
    monkeypatch.setattr(
        sdft_trainer, "apply_importance_sampling_clipping", lambda *a, **k: corrections.append(1) or clip(*a, **k)
    )
    trainer = toy_trainer(
        model,
        tokenizer,
        tmp_path,
        use_vllm=True,
        per_device_train_batch_size=4,
        steps_per_generation=2,
        max_steps=2,
        empirical_calibration=calibrate,
    )
    captured = capture_batches(trainer)
    trainer.train()
    assert trainer.vllm_generation.logprobs is None  # TRL asks vLLM for no sampling log-probs
    _, batch = captured["final"][0]
    assert ("old_per_token_logps" in batch) is expects_logps
    assert bool(corrections) is expects_logps


@pytest.mark.parametrize("mode", MODES)
def test_self_consistency_references_are_greedy_and_belong_to_their_prompts(model, tokenizer, tmp_path, mode):
    trainer = toy_trainer(model, tokenizer, tmp_path, use_vllm=True, vllm_mode=mode, self_consistency=True)
    references = record_references(trainer)
    trainer.train()
    generation = trainer.vllm_generation
    _, call = generation.calls
    assert call.num_generations == 1 and call.temperature == 0.0  # greedy, one completion per prompt
    assert generation.temperature == 1.0  # the rollouts' sampling temperature is restored
    (by_uid,) = references
    assert len(call.prompts) == len(by_uid) == 2

    # Recompute the batch greedily on the weights it ran on, and look each prompt's reference up by its own ids.
    generation.temperature = 0.0
    greedy = [trainer._decode(trainer._strip_eos(ids)) for ids in generation._sample(call.prompts, 1)]
    rows = trainer.train_dataset
    for uid, reference in by_uid.items():
        prompt = trainer.teacher_context_builder.select_generation_prompts(
            [rows[uid]["prompt"]], [rows[uid]["privileged_context"]]
        )
        (ids,) = trainer._tokenize_prompts(prompt)
        assert reference == greedy[call.prompts.index(ids)]


@pytest.mark.slow
def test_server_mode_references_with_uneven_prompts_per_process(tmp_path):
    # Three processes hold 1, 2 and 1 distinct prompts. TRL's server path gives process r the results
    # r*n .. (r+1)*n-1 of the gathered requests, so unequal request counts would hand the middle process
    # another prompt's reference.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "3"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += [str(ROOT / "tests" / "mp_vllm_server.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]

    per_rank = [json.loads((tmp_path / f"references_rank{rank}.json").read_text()) for rank in range(3)]
    assert [len(references) for references in per_rank] == [1, 2, 1]
    for references in per_rank:
        for uid, text in references.items():
            assert f"Question {uid}: name a colour." in text, f"prompt {uid} got another prompt's reference"

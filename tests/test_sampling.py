"""One sampling configuration for both evaluation backends, resolved once (flags, else the model's
generation_config, else off), held to vLLM's rules before anything loads, and recorded in metrics.json."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT
from tiny_model import save_tiny_model

import caopd.generation as generation
from caopd.generation import Sampling, generate, resolve_sampling

FAKE_VLLM = [str(ROOT / "tests" / "fake_vllm"), str(ROOT / "tests")]
NO_FLAGS = {"num_samples": None, "temperature": None, "top_p": None, "top_k": None, "min_p": None}


def _eval_arithmetic(model_dir, out, *argv):
    command = [sys.executable, str(ROOT / "eval_arithmetic.py"), "--model_path", str(model_dir)]
    command += ["--output_dir", str(out), "--num_questions", "2", "--max_new_tokens", "4", "--n_bootstrap", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(FAKE_VLLM)}  # `import vllm` finds the strict stand-in
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_greedy_evaluation_gives_one_response_per_question(tmp_path, backend):
    model_dir = save_tiny_model(tmp_path / "tiny")
    finished = _eval_arithmetic(model_dir, tmp_path / "greedy", "--temperature", "0", "--backend", backend)
    assert finished.returncode == 0, finished.stderr[-3000:]
    metrics = json.loads((tmp_path / "greedy" / "metrics.json").read_text())
    assert metrics["n_samples"] == 2 and metrics["sampling"]["num_samples"] == 1
    assert metrics["sampling"]["sources"] == {
        "temperature": "flag",
        "top_p": "flag",
        "top_k": "off",
        "min_p": "off",
        "repetition_penalty": "off",
        "num_samples": "default",
    }


def test_greedy_with_several_samples_is_one_line_before_loading(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    argv = ["--temperature", "0", "--num_samples", "8", "--backend", "vllm"]
    finished = _eval_arithmetic(model_dir, tmp_path / "out", *argv)
    assert finished.returncode == 2 and "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1].startswith("error: --temperature 0 is greedy decoding")
    assert not (tmp_path / "out").exists()


def test_both_backends_get_one_sampling_configuration(tmp_path, monkeypatch):
    """The model's generation_config sets top-k and a repetition penalty: both backends sample with them, and with
    the flags' temperature and top-p, the same length limit and the same stop tokens."""
    model_dir = save_tiny_model(tmp_path / "tiny")
    config = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps(config | {"top_k": 7, "repetition_penalty": 1.1}))
    sampling, sources = resolve_sampling({"temperature": 0.6, "top_p": 0.95}, str(model_dir), 5, 2, 0)
    assert (sampling.top_k, sampling.repetition_penalty, sampling.min_p, sampling.num_samples) == (7, 1.1, 0.0, 8)
    assert sources["top_k"] == sources["repetition_penalty"] == "generation_config" and sources["min_p"] == "off"

    seen = {}
    shared_prefill = generation.generate_with_shared_prefill

    def record_transformers(model, input_ids, attention_mask, options):
        seen["transformers"] = options
        return shared_prefill(model, input_ids, attention_mask, options)

    monkeypatch.setattr(generation, "generate_with_shared_prefill", record_transformers)
    prompts = [[1, 504, 2, 198], [1, 28, 29]]
    generate(str(model_dir), prompts, sampling, "transformers")

    import vllm_doubles  # under the name `vllm` for this test only: TRL must not take it for an installed vLLM

    vllm = SimpleNamespace(LLM=vllm_doubles.FakeLLM, SamplingParams=vllm_doubles.StrictSamplingParams)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setattr(generation.importlib.util, "find_spec", lambda name: name == "vllm" or None)

    original = vllm.LLM.generate

    def record_vllm(self, requests, params, **options):
        seen["vllm"] = params
        return original(self, requests, params, **options)

    monkeypatch.setattr(vllm.LLM, "generate", record_vllm)
    responses = generate(str(model_dir), prompts, sampling, "vllm")
    assert [len(samples) for samples in responses] == [8, 8]

    hf, params = seen["transformers"], seen["vllm"]
    assert (hf["temperature"], hf["top_p"], hf["top_k"], hf["repetition_penalty"]) == (0.6, 0.95, 7, 1.1)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.6, 0.95, 7, 1.1)
    assert hf.get("min_p", 0.0) == params.min_p == 0.0
    assert hf["max_new_tokens"] == params.max_tokens == 5 and hf["num_return_sequences"] == params.n == 8
    assert hf["eos_token_id"] == params.stop_token_ids == [2]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": 2.5}, "--temperature must lie in [0, 2]"),
        ({"top_p": 0.0}, "--top_p must lie in (0, 1]"),
        ({"top_k": -1}, "--top_k must be 0 (off) or positive"),
        ({"min_p": 1.5}, "--min_p must lie in [0, 1]"),
        ({"repetition_penalty": 0.0}, "--repetition_penalty must be positive"),
        ({"temperature": 0.0, "num_samples": 2}, "--temperature 0 is greedy decoding"),
    ],
)
def test_settings_vllm_refuses_are_refused_on_both_backends(settings, message):
    assert Sampling(**settings).problem().startswith(message)

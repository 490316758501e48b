"""Start-up checks of the generation backend and precision: one clear line before anything is loaded."""

import pytest
from test_cli import _error

import caopd.backends as backends
from caopd.backends import BackendError, resolve_bf16, resolve_use_vllm, supported_vllm_range


def test_supported_range_is_read_from_trls_own_metadata():
    assert supported_vllm_range() == "<=0.31.0,>=0.22.0"  # TRL 1.16.0's `vllm` extra


@pytest.mark.parametrize(
    ("installed", "gpu", "message"),
    [
        (None, True, "vLLM is not installed"),
        ("0.33.0", True, "vLLM 0.33.0 is installed, but TRL 1.16.0 supports vllm<=0.31.0,>=0.22.0"),
        ("0.21.1", True, "supports vllm<=0.31.0,>=0.22.0"),
        ("0.31.0", False, "needs a CUDA GPU"),
    ],
)
def test_use_vllm_that_cannot_run_is_refused(monkeypatch, installed, gpu, message):
    monkeypatch.setattr(backends, "installed_vllm_version", lambda: installed)
    with pytest.raises(BackendError, match=message.replace(".", r"\.")):
        resolve_use_vllm(True, gpu_available=gpu)


def test_use_vllm_defaults_on_only_with_vllm_and_a_gpu(monkeypatch):
    monkeypatch.setattr(backends, "installed_vllm_version", lambda: "0.31.0")
    assert resolve_use_vllm(None, gpu_available=True) is True
    assert resolve_use_vllm(None, gpu_available=False) is False
    assert resolve_use_vllm(False, gpu_available=True) is False
    monkeypatch.setattr(backends, "installed_vllm_version", lambda: "0.33.0")
    with pytest.raises(BackendError, match="supports vllm"):  # an unusable vLLM is named, not silently skipped
        resolve_use_vllm(None, gpu_available=True)


def test_bf16_needs_a_gpu():
    assert resolve_bf16(None, gpu_available=False) is False
    with pytest.raises(BackendError, match="--bf16 needs a GPU"):
        resolve_bf16(True, gpu_available=False)


def test_cli_reports_an_unsupported_vllm_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(backends, "installed_vllm_version", lambda: "0.33.0")
    message = _error(capsys, ["--output_dir", "o", "--use_vllm", "--no_wandb"])
    assert "vLLM 0.33.0 is installed, but TRL" in message and "requirements-gpu.txt" in message


def test_cli_refuses_vllm_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(backends, "installed_vllm_version", lambda: "0.31.0")
    assert "--use_vllm needs a CUDA GPU" in _error(capsys, ["--output_dir", "o", "--use_vllm", "--no_wandb"])

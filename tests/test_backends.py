"""Start-up checks of the generation backend and precision: one clear line before anything is loaded."""

import http.server
import socket
import threading
import time

import pytest
from test_cli import _error

import caopd.backends as backends
from caopd.backends import BackendError, check_vllm_server, resolve_bf16, resolve_use_vllm, supported_vllm_range


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


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health/" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_running_vllm_server_passes_its_health_check():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_vllm_server("127.0.0.1", server.server_address[1], timeout=5)
    finally:
        server.shutdown()


@pytest.mark.parametrize("listening", [False, True], ids=["refused", "accepts-never-answers"])
def test_an_unreachable_vllm_server_stops_in_bounded_time(listening):
    """Nothing on the port, or a socket that accepts and never replies (TRL's client would wait on it forever)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if listening:
            sock.listen()
        port = sock.getsockname()[1]
        started = time.monotonic()
        expected = f"no vLLM server answered at http://127.0.0.1:{port}/health/ within 2 s"
        with pytest.raises(BackendError, match=expected):
            check_vllm_server("127.0.0.1", port, timeout=2)
        assert time.monotonic() - started < 4


def test_a_run_without_its_vllm_server_ends_in_one_line(tmp_path, monkeypatch, capsys):
    import main

    monkeypatch.setattr(main, "resolve_use_vllm", lambda requested: True)  # as on a GPU machine with vLLM
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        flags = ["--output_dir", str(tmp_path / "run"), "--no_wandb", "--use_vllm", "--vllm_mode", "server"]
        flags += ["--vllm_server_host", "127.0.0.1", "--vllm_server_port", str(sock.getsockname()[1])]
        assert main.main([*flags, "--vllm_server_timeout", "1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --vllm_mode server: no vLLM server answered at")

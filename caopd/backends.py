"""Which generation backend and precision this machine can run, checked before anything is loaded.

vLLM is optional (GPU machines, ``requirements-gpu.txt``). TRL declares the vLLM releases it supports in its
``vllm`` extra; a release outside that range fails deep inside TRL's generation code, hours into a job on a
busy node, so the range is read from TRL's own metadata and checked at start-up instead.
"""

from __future__ import annotations

import importlib.util
import time
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, requires, version

import torch
from packaging.requirements import Requirement
from packaging.version import Version

GPU_SETUP_HINT = "pip install -r requirements-gpu.txt (or bash scripts/setup.sh on the GPU machine)"


class BackendError(ValueError):
    """The requested generation backend or precision cannot run here; the message says what to do."""


def supported_vllm_range() -> str:
    """The vLLM specifier of the installed TRL's ``vllm`` extra (e.g. ``>=0.22.0,<=0.31.0``), or '' if none."""
    for line in requires("trl") or []:
        requirement = Requirement(line)
        if requirement.name == "vllm" and requirement.marker is not None:
            if requirement.marker.evaluate({"extra": "vllm"}):
                return str(requirement.specifier)
    return ""


def installed_vllm_version() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        return version("vllm")
    except PackageNotFoundError:
        return None


def check_vllm(gpu_available: bool) -> None:
    """Raise BackendError unless vLLM generation can start here: installed, in TRL's range, with a GPU."""
    installed = installed_vllm_version()
    if installed is None:
        raise BackendError(f"--use_vllm: vLLM is not installed ({GPU_SETUP_HINT}); or drop --use_vllm")
    specifier = supported_vllm_range()
    if specifier and not Requirement(f"vllm{specifier}").specifier.contains(Version(installed), prereleases=True):
        raise BackendError(
            f"--use_vllm: vLLM {installed} is installed, but TRL {version('trl')} supports vllm{specifier}; "
            f"install the pinned release ({GPU_SETUP_HINT}), or pass --no-use_vllm"
        )
    if not gpu_available:
        raise BackendError("--use_vllm needs a CUDA GPU, and none is visible; pass --no-use_vllm on this machine")


def resolve_use_vllm(requested: bool | None, gpu_available: bool | None = None) -> bool:
    """The ``--use_vllm`` value to run with: as requested (checked), or on when vLLM and a GPU are present."""
    gpu = torch.cuda.is_available() if gpu_available is None else gpu_available
    if requested is None:
        if installed_vllm_version() is None or not gpu:
            return False
        requested = True
    if requested:
        check_vllm(gpu)
    return requested


def resolve_bf16(requested: bool | None, gpu_available: bool | None = None) -> bool:
    """``--bf16`` as requested (it needs a GPU), or on when the GPU supports it."""
    gpu = torch.cuda.is_available() if gpu_available is None else gpu_available
    if requested is None:
        return gpu and torch.cuda.is_bf16_supported()
    if requested and not gpu:
        raise BackendError("--bf16 needs a GPU; on CPU leave it off (--no-bf16)")
    return requested


def check_vllm_server(host: str, port: int, timeout: float) -> None:
    """Raise BackendError unless the vLLM server answers its health check within ``timeout`` seconds.

    TRL's client waits for the server too, but each of its requests has no time limit of its own: a host that
    accepts the connection and never replies (a wrong port, a half-started server) would hold the run forever.
    Here every request is bounded by the time left, so a run without its server stops in ``timeout`` seconds, with
    the flags to check.
    """
    url = f"http://{host}:{port}/health/"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendError(
                f"--vllm_mode server: no vLLM server answered at {url} within {timeout:g} s ({last}); start it "
                "(scripts/run_vllm_server.sh), check --vllm_server_host and --vllm_server_port, or raise "
                "--vllm_server_timeout"
            )
        try:
            with urllib.request.urlopen(url, timeout=min(left, 10.0)) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code}"
        except (OSError, ValueError) as err:  # refused, unreachable, timed out, a malformed host
            last = str(getattr(err, "reason", err))
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))

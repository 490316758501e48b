"""TRL's vLLM generation on a CPU: its own ``VLLMGeneration`` and ``VLLMClient`` code over strict stand-ins for
what lies below them.

- colocate mode: TRL's ``generate`` and ``sync_weights`` call ``vllm_doubles.FakeLLM`` (vLLM 0.31's sampling checks,
  its context limit, an engine built from ``model.name_or_path`` as TRL builds it, weights loaded by vLLM's names);
- server mode: ``FakeVLLMServer`` is an HTTP server with the endpoints TRL's ``VLLMClient`` calls (``/health``,
  ``/v1/models``, ``/server_info`` (only with development mode), ``/get_world_size``, ``/init_weight_transfer_engine``,
  ``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``, ``/v1/completions``,
  ``/reset_prefix_cache``), answering 400 where vLLM's server does. ``StandInVLLMClient`` is TRL's client with only
  its NCCL parts replaced: the tensors reach the server in-process, by name, after TRL announces them.

Every generation request is recorded in ``calls`` so that tests can check what the trainer asked for.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import torch
import trl.generation.vllm_client as vllm_client
import trl.generation.vllm_generation as vllm_generation
import trl.trainer.grpo_trainer as grpo_trainer
from vllm_doubles import SAMPLING_KEYS, Engine, FakeLLM, StrictSamplingParams, VLLMValidationError


@dataclass(frozen=True)
class GenerationCall:
    mode: str
    prompts: list[list[int]]
    num_generations: int
    max_tokens: int
    temperature: float


class FakeVLLMServer:
    """``vllm serve`` with the endpoints TRL's client calls, on 127.0.0.1 in a background thread."""

    running: ClassVar[dict[int, FakeVLLMServer]] = {}

    def __init__(self, model_path: str, max_model_len: int | None = None, dev_mode: bool = True, world_size: int = 1):
        self.engine = Engine(model_path, max_model_len)
        self.model_path, self.dev_mode, self.world_size = model_path, dev_mode, world_size
        self.weight_transfer_ready = False
        self.pending: dict[str, torch.Tensor] = {}
        self.requests: list[dict] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        FakeVLLMServer.running[self.port] = self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        FakeVLLMServer.running.pop(self.port, None)

    def answer(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        """(status, JSON) for one request."""
        routes = {
            ("GET", "/health"): lambda: {},
            ("GET", "/v1/models"): lambda: {"data": [{"id": self.model_path}]},
            ("GET", "/get_world_size"): lambda: {"world_size": self.world_size},
            ("POST", "/start_weight_update"): lambda: {},
            ("POST", "/finish_weight_update"): lambda: {},
            ("POST", "/reset_prefix_cache"): lambda: {"success": True},
            ("POST", "/init_weight_transfer_engine"): lambda: self._init_weight_transfer(body),
            ("POST", "/update_weights"): lambda: self._update_weights(body),
            ("POST", "/v1/completions"): lambda: self._completions(body),
        }
        if path == "/server_info":
            if not self.dev_mode:
                return 404, {"detail": "Not Found"}
            config = {"weight_transfer_config": {"backend": "nccl"}}
            config["model_config"] = {"max_model_len": self.engine.max_model_len, "logprobs_mode": "processed_logprobs"}
            return 200, {"vllm_config": config}
        route = routes.get((method, path))
        if route is None:
            return 404, {"detail": "Not Found"}
        try:
            return 200, route()
        except (VLLMValidationError, KeyError, ValueError, TypeError) as err:
            return 400, {"error": {"message": str(err), "type": type(err).__name__}}

    def _init_weight_transfer(self, body: dict) -> dict:
        info = body["init_info"]
        if info["world_size"] != self.world_size + 1 or info["rank_offset"] != 1:
            raise ValueError(
                f"weight-transfer group of world size {info['world_size']}, expected {self.world_size + 1}"
            )
        self.weight_transfer_ready = True
        return {}

    def _update_weights(self, body: dict) -> dict:
        if not self.weight_transfer_ready:
            raise ValueError("/update_weights before /init_weight_transfer_engine")
        info = body["update_info"]
        received, self.pending = self.pending, {}
        if list(received) != info["names"]:
            raise ValueError("the tensors broadcast do not match the announced names")
        for name, dtype, shape in zip(info["names"], info["dtype_names"], info["shapes"], strict=True):
            if str(received[name].dtype).removeprefix("torch.") != dtype or list(received[name].shape) != shape:
                raise ValueError(
                    f"{name}: announced {dtype} {shape}, broadcast {received[name].dtype} {received[name].shape}"
                )
        self.engine.load_weights(received.items())
        return {}

    def _completions(self, body: dict) -> dict:
        self.requests.append(body)
        known = {"model", "prompt", "return_token_ids", "return_tokens_as_token_ids", *SAMPLING_KEYS}
        unknown = sorted(set(body) - known)
        if unknown:
            raise TypeError(f"the stand-in does not model the request field(s) {unknown}")
        params = StrictSamplingParams(**{key: body[key] for key in SAMPLING_KEYS if key in body})
        prompts = body["prompt"]
        choices = []
        for prompt_ids, completions in zip(prompts, self.engine.sample(prompts, params), strict=True):
            for tokens, reason, logprobs in completions:
                choices.append(
                    {
                        "prompt_token_ids": prompt_ids,
                        "token_ids": tokens,
                        "logprobs": None if logprobs is None else _completion_logprobs(tokens, logprobs),
                        "finish_reason": reason,
                    }
                )
        return {"choices": choices}


def _completion_logprobs(tokens: list[int], logprobs: list[float]) -> dict:
    """The OpenAI completions ``logprobs`` block vLLM answers with (tokens as ``token_id:<id>``)."""
    return {
        "tokens": [f"token_id:{token}" for token in tokens],
        "token_logprobs": logprobs,
        "top_logprobs": [None] * len(tokens),
    }


def _handler(server: FakeVLLMServer):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            status, answer = server.answer(method, self.path.split("?")[0], body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply("GET")

        def do_POST(self):
            self._reply("POST")

        def log_message(self, *args):  # quiet
            pass

    return Handler


class StandInVLLMClient(vllm_client.VLLMClient):
    """TRL's ``VLLMClient`` with its NCCL parts replaced: the handshake and requests go over HTTP as TRL sends them;
    the weight broadcast hands the tensors to the server in-process (by name, announced first as TRL does)."""

    def init_communicator(self, device=0):
        if self.get_server_info()["weight_transfer_config"] is None:
            raise RuntimeError("the server has no weight-transfer engine")
        init_info = {"master_address": "127.0.0.1", "master_port": self.group_port, "rank_offset": 1}
        init_info["world_size"] = self.get_world_size() + 1
        self._post(f"{self.base_url}/init_weight_transfer_engine", json={"init_info": init_info})
        self.communicator = "in-process"

    def update_named_params(self, metadata, named_params):
        server = FakeVLLMServer.running[int(self.base_url.rsplit(":", 1)[1])]
        server.pending = {name: tensor.detach().cpu().clone() for name, tensor in named_params}
        names, dtypes, shapes = (list(field) for field in zip(*metadata, strict=True))
        update_info = {"names": names, "dtype_names": dtypes, "shapes": shapes}
        if not self._updating_weights:
            self._start_weight_update()
        self._post(f"{self.base_url}/update_weights", json={"update_info": update_info})
        if not self._updating_weights:
            self._finish_weight_update()

    def close_communicator(self):
        self.communicator = None


class StandInVLLMGeneration(vllm_generation.VLLMGeneration):
    """TRL's ``VLLMGeneration`` over the stand-ins: everything above vLLM is TRL's code."""

    def _init_vllm(self):
        self.calls: list[GenerationCall] = []
        self.syncs = 0
        if self.mode == "colocate":
            if not self.accelerator.num_processes % self.tensor_parallel_size == 0:
                raise ValueError("tensor_parallel_size must divide the world size")
            self.llm = FakeLLM(
                model=self.model.name_or_path,
                max_model_len=self.max_model_length,
                seed=self.accelerator.process_index // self.tensor_parallel_size,
            )
            self._llm_weights_sleeping = False
        elif self.mode == "server":
            if self.accelerator.is_main_process:
                base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
                self.vllm_client = StandInVLLMClient(
                    base_url=base_url, group_port=self.group_port, connection_timeout=self.server_timeout
                )
                self.vllm_client.init_communicator(device=self.accelerator.device)
        else:
            raise ValueError(f"vllm_mode must be either 'server' or 'colocate', got '{self.mode}'.")
        self.accelerator.wait_for_everyone()

    def sync_weights(self):
        self.syncs += 1
        super().sync_weights()

    def generate(self, prompts, images, num_generations, profiler=None):
        call = GenerationCall(
            self.mode, [list(ids) for ids in prompts], num_generations, self.max_completion_length, self.temperature
        )
        self.calls.append(call)
        return super().generate(prompts, images, num_generations, profiler)


def install(monkeypatch=None) -> None:
    """Make TRL's trainers build the stand-in where they build ``VLLMGeneration``: through a pytest ``monkeypatch``
    (undone after the test), or for the rest of the process (the multi-process test scripts)."""
    replacements = [
        (vllm_generation, "VLLMGeneration", StandInVLLMGeneration),
        (grpo_trainer, "VLLMGeneration", StandInVLLMGeneration),  # GRPO imports the class at module level
        (vllm_generation, "SamplingParams", StrictSamplingParams),
        (vllm_client, "is_vllm_available", lambda *args, **kwargs: True),
    ]
    for module, name, value in replacements:
        if monkeypatch is None:
            setattr(module, name, value)
        else:
            monkeypatch.setattr(module, name, value, raising=False)

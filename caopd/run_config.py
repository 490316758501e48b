"""The resolved run configuration, saved as YAML beside the checkpoints (atomically)."""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from caopd.atomic import write_text_atomically

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
    """Write YAML so that a reader never sees a half-written config."""
    write_text_atomically(path, yaml.safe_dump(payload, sort_keys=False, allow_unicode=True))

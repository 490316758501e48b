"""``--config``: a YAML file of flags as TRL's scripts read it (keys are flag names, an ``env:`` mapping sets
environment variables), read strictly: every value typed and checked as its flag is, an unknown key refused by name,
and a nest of YAML aliases refused before it expands."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import yaml

from caopd.checks import CLIError
from caopd.run_arguments import BACKBONES, SWITCH_TYPE

# YAML aliases a config may use: a flag file needs few, and a nest of aliases expands to gigabytes when printed.
MAX_YAML_ALIASES = 32


def read_config(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_YAML_ALIASES:
            raise CLIError(
                f"--config {path}: {aliases} YAML aliases (*name), more than a flag file needs ({MAX_YAML_ALIASES}); "
                "write the values out"
            )
        values = yaml.safe_load(text) or {}
    except OSError as err:
        raise CLIError(f"--config {path}: cannot read it ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise CLIError(f"--config {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise CLIError(f"--config {path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(values, dict):
        raise CLIError(f"--config {path}: expected a mapping of flag names to values")
    odd = [key for key in values if not isinstance(key, str)]
    if odd:
        raise CLIError(f"--config {path}: key {odd[0]!r} is not a flag name; keys are flag names without '--'")
    if "backbone" in values and not (isinstance(values["backbone"], str) and values["backbone"] in BACKBONES):
        raise CLIError(f"--config {path}: backbone must be one of {', '.join(BACKBONES)}, got {values['backbone']!r}")
    return values


def set_environment(path: str | None, environment: Any) -> None:
    """The config's ``env:`` mapping, as TRL's scripts set it: variable names to plain values."""
    if environment is None:
        return
    if not isinstance(environment, dict) or not all(
        isinstance(name, str) and isinstance(value, (str, int, float, bool)) for name, value in environment.items()
    ):
        raise CLIError(f"--config {path}: env must map variable names to plain values (text or numbers)")
    for name, value in environment.items():
        os.environ[name] = str(value).lower() if isinstance(value, bool) else str(value)


def typed_config(
    path: str,
    values: dict[str, Any],
    parser: argparse.ArgumentParser,
    backbone: str,
    owners: Callable[[str, str], list[str]],
    dict_fields: Collection[str] = (),
) -> dict[str, Any]:
    """The config's values under their destinations, each typed and checked as its flag is; ``owners(flag,
    backbone)`` names the other backbones that have a flag, for a key this one lacks. A mapping given for one of
    ``dict_fields`` (the config's own, e.g. ``lr_scheduler_kwargs``) becomes the JSON text its flag takes."""
    actions = {flag[2:]: action for flag, action in parser._option_string_actions.items() if flag != "--config"}
    unknown = sorted(key for key in values if key not in actions or key == "help")
    if unknown:
        others = owners(f"--{unknown[0]}", backbone)
        if others:
            raise CLIError(
                f"--config {path}: {unknown[0]} is a setting of --backbone {' / '.join(others)}; --backbone "
                f"{backbone} has no such setting: drop it"
            )
        raise CLIError(f"--config {path}: unknown key(s) {', '.join(unknown)}; keys are flag names without '--'")
    typed = {}
    for key, value in values.items():
        action = actions[key]
        if action.dest in dict_fields and isinstance(value, dict):
            value = json.dumps(value)
        value = _config_value(path, key, value, action)
        typed[action.dest] = (not value) if isinstance(action, argparse._StoreFalseAction) else value
    return typed


def _config_value(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """One YAML value, typed as its flag expects: booleans strictly (true/false, or the strings "true"/"false"),
    numbers through the flag's own check, text as text (``report_to`` also as a list); anything else refused."""
    where = f"--config {path}: {key}"
    if value is None:
        return None
    if action.nargs == 0 or action.type is SWITCH_TYPE:  # a switch
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise CLIError(f"{where} must be true or false, got {value!r}")
        return value
    if key == "report_to" and isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = ",".join(value)
    if action.nargs == "+":
        return [_one_value(where, item, action) for item in (value if isinstance(value, list) else [value])]
    return _one_value(where, value, action)


def _one_value(where: str, value: Any, action: argparse.Action) -> Any:
    if action.type in (None, str):
        if not isinstance(value, str):
            raise CLIError(f"{where} must be text, got {value!r} ({type(value).__name__}); quote it in the YAML")
    elif isinstance(value, (list, dict)):
        raise CLIError(f"{where} must be a single value, got {value!r}")
    else:
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise CLIError(f"{where}={value!r} is not valid: {err}") from err
    if action.choices is not None and value not in action.choices:
        raise CLIError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value

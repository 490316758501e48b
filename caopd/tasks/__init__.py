"""The task registry: ``--dataset_name`` -> Task."""

from __future__ import annotations

from importlib import import_module

from caopd.tasks.base import Task, TaskDataError
from caopd.verifiers import TOOLUSE_MATCHES

_TASK_MODULES = {
    "science": ("caopd.tasks.science", "SCIENCE_TASK"),
    "arithmetic": ("caopd.tasks.arithmetic", "ARITHMETIC_TASK"),
}
TASK_NAMES = ("tooluse", *_TASK_MODULES, "custom")


def get_task(name: str, verifier: str | None = None, tooluse_match: str = "sequence") -> Task:
    """The task registered under ``name``; ``custom`` takes its verifier from ``verifier`` (``--verifier``).

    ``tooluse_match`` is the tool-use rule (``--tooluse_match``): for the tool-use task and the ``tooluse`` verifier.
    """
    if tooluse_match not in TOOLUSE_MATCHES:
        raise TaskDataError(f"--tooluse_match must be one of {', '.join(TOOLUSE_MATCHES)}, got {tooluse_match!r}")
    judges_tool_use = name == "tooluse" or (name == "custom" and verifier == "tooluse")
    if tooluse_match != "sequence" and not judges_tool_use:
        raise TaskDataError("--tooluse_match applies to tool use (--dataset_name tooluse, or --verifier tooluse)")
    if name == "custom":
        from caopd.tasks.custom import VERIFIER_HELP, custom_task

        if not verifier:
            raise TaskDataError(f"--dataset_name custom needs --verifier ({VERIFIER_HELP})")
        return custom_task(verifier, tooluse_match)
    if verifier:
        raise TaskDataError(f"--verifier applies to --dataset_name custom; {name} has its own verifier")
    if name == "tooluse":
        from caopd.tasks.tooluse import tooluse_task

        return tooluse_task(tooluse_match)
    if name not in _TASK_MODULES:
        raise TaskDataError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    module, attribute = _TASK_MODULES[name]
    return getattr(import_module(module), attribute)


__all__ = ["TASK_NAMES", "Task", "TaskDataError", "get_task"]

"""The task registry: ``--dataset_name`` -> Task."""

from __future__ import annotations

from importlib import import_module

from caopd.tasks.base import Task, TaskDataError

_TASK_MODULES = {
    "tooluse": ("caopd.tasks.tooluse", "TOOLUSE_TASK"),
    "science": ("caopd.tasks.science", "SCIENCE_TASK"),
    "arithmetic": ("caopd.tasks.arithmetic", "ARITHMETIC_TASK"),
}
TASK_NAMES = (*_TASK_MODULES, "custom")


def get_task(name: str, verifier: str | None = None) -> Task:
    """The task registered under ``name``; ``custom`` takes its verifier from ``verifier`` (``--verifier``)."""
    if name == "custom":
        from caopd.tasks.custom import VERIFIER_HELP, custom_task

        if not verifier:
            raise TaskDataError(f"--dataset_name custom needs --verifier ({VERIFIER_HELP})")
        return custom_task(verifier)
    if verifier:
        raise TaskDataError(f"--verifier applies to --dataset_name custom; {name} has its own verifier")
    if name not in _TASK_MODULES:
        raise TaskDataError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    module, attribute = _TASK_MODULES[name]
    return getattr(import_module(module), attribute)


__all__ = ["TASK_NAMES", "Task", "TaskDataError", "get_task"]

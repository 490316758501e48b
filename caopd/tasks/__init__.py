"""The task registry: ``--dataset_name`` -> Task."""

from __future__ import annotations

from importlib import import_module

from caopd.tasks.base import Task, TaskDataError

_TASK_MODULES = {
    "tooluse": ("caopd.tasks.tooluse", "TOOLUSE_TASK"),
    "science": ("caopd.tasks.science", "SCIENCE_TASK"),
    "arithmetic": ("caopd.tasks.arithmetic", "ARITHMETIC_TASK"),
}
TASK_NAMES = tuple(_TASK_MODULES)


def get_task(name: str) -> Task:
    """The task registered under ``name``."""
    if name not in _TASK_MODULES:
        raise TaskDataError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    module, attribute = _TASK_MODULES[name]
    return getattr(import_module(module), attribute)


__all__ = ["TASK_NAMES", "Task", "TaskDataError", "get_task"]

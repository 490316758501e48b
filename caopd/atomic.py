"""Write files so that a reader never sees half of one: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(path: Path | str, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call ``write(stream)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def output_file_problem(path: Path | str, flag: str) -> str | None:
    """Why ``path`` cannot be written as a file (it is a folder), or None."""
    return f"{flag} {path} is a folder; give a file name in it" if Path(path).is_dir() else None


def write_text_atomically(path: Path | str, text: str) -> None:
    write_atomically(path, lambda stream: stream.write(text))


def check_replaceable_dataset(path: Path | str) -> None:
    """Raise ``FileExistsError`` unless ``path`` is free, an empty folder or an earlier saved dataset."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / "dataset_info.json").exists())):
        raise FileExistsError(f"{path} exists and is not a saved dataset; it was left alone: choose a new folder")


def save_dataset_atomically(dataset, path: Path | str) -> None:
    """``dataset.save_to_disk`` into a staging folder beside ``path``, then swap it in place of ``path``.

    Only an earlier saved dataset (or an empty folder) is replaced: anything else at ``path`` is left alone and
    raises ``FileExistsError``, so a mistyped output path never deletes a user's files.
    """
    path = Path(path)
    check_replaceable_dataset(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        dataset.save_to_disk(str(staging))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

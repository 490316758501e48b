"""Write files so that a reader never sees half of one: a temporary file in the same folder, then a rename.

Written files get the permissions the user's umask gives new files (a temporary file is created private). A set of
outputs that belong together (an evaluation's inference and metrics) is written in full to temporaries first and
renamed into place only then, so a failure (a full disk) leaves the earlier set as it was, not half replaced.
Each temporary is flushed to the disk (fsync) before its rename and the folder after it, so a machine that loses
power just after a write keeps either the old file or the whole new one, never an empty one under the new name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _user_file_mode() -> int:
    """The mode a new file gets under the process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temporary_copy(path: Path, write: Callable[[IO], None], mode: str) -> Path:
    """``write(stream)`` into a temporary sibling of ``path`` with the user's permissions; its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _user_file_mode())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def write_atomically(path: Path | str, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call ``write(stream)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    write_set_atomically({Path(path): (write, mode)})


def write_set_atomically(outputs: dict[Path, tuple[Callable[[IO], None], str]]) -> None:
    """Write every output to its temporary first, then rename them all into place: a failure while writing (a full
    disk, a bad value) leaves every earlier file untouched."""
    written: dict[Path, Path] = {}
    try:
        for path, (write, mode) in outputs.items():
            written[Path(path)] = _temporary_copy(Path(path), write, mode)
    except BaseException:
        for temporary in written.values():
            temporary.unlink(missing_ok=True)
        raise
    for path, temporary in written.items():
        os.replace(temporary, path)
    for folder in {path.parent for path in written}:
        sync_folder(folder)


def sync_folder(folder: Path | str) -> None:
    """Flush a folder's entries (a rename into it) to the disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def output_file_problem(path: Path | str, flag: str, overwrite: bool = True) -> str | None:
    """Why ``path`` cannot be written as a file (a folder, a folder that is a file, one we may not write, an earlier
    result kept without ``overwrite``), or None."""
    path = Path(path)
    if path.is_dir():
        return f"{flag} {path} is a folder; give a file name in it"
    if path.exists() and not overwrite:
        return f"{flag} {path} already exists; pass --overwrite to replace it, or choose another name"
    return output_folder_problem(path.parent, flag)


def output_folder_problem(folder: Path | str, flag: str) -> str | None:
    """Why files cannot be written into ``folder`` (or the folder it would be created in), or None."""
    folder = Path(folder)
    existing = next((parent for parent in (folder, *folder.parents) if parent.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return f"{flag}: {existing} is a file, so nothing can be written under it; choose another path"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag}: {existing} is not writable by you; choose another path"
    return None


def write_text_atomically(path: Path | str, text: str) -> None:
    write_atomically(path, lambda stream: stream.write(text))


def check_replaceable_dataset(path: Path | str) -> None:
    """Raise ``FileExistsError`` unless ``path`` is free, an empty folder or an earlier saved dataset, and
    ``NotADirectoryError`` / ``PermissionError`` when it could not be written (under a file, in a read-only folder)."""
    path = Path(path)
    problem = output_folder_problem(path, "")
    if problem:
        kind = PermissionError if "not writable" in problem else NotADirectoryError
        raise kind(problem.removeprefix(": "))
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

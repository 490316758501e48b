"""Checkpoints that are complete or do not count: a completion marker written last, checked before a resume.

A run on a shared node can be killed at any moment, also while ``checkpoint-N`` is being written (the Trainer's
files, the EMA teacher, each process's shards). The Trainer writes into ``checkpoint-N`` directly, so its folder
exists long before it is whole. Here, once every process has written its part, the main process lists every file
of the folder with its size in ``caopd_complete.json``, written atomically and last. A checkpoint counts only
with that marker and with every listed file present at its listed size, and its safetensors files readable:

- ``--resume_from_checkpoint latest`` takes the newest complete checkpoint and names, in one warning line, the
  newer ones it skips;
- an explicit path to an incomplete or damaged checkpoint is refused in one line before anything is loaded;
- a checkpoint folder left incomplete by a killed run is cleared when the run writes that step again;
- with ``--save_total_limit``, only complete checkpoints are counted and deleted, after the marker.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from safetensors import SafetensorError, safe_open

from caopd.atomic import write_text_atomically

MARKER = "caopd_complete.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, with what is wrong and what to do."""


def checkpoint_step(path: Path) -> int | None:
    match = _STEP.match(path.name)
    return int(match.group(1)) if match else None


def write_marker(checkpoint: str | Path, step: int) -> None:
    """List every file of ``checkpoint`` with its size, atomically: the checkpoint is complete from now on."""
    folder = Path(checkpoint)
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MARKER
    }
    write_text_atomically(folder / MARKER, json.dumps({"step": step, "files": files}, indent=1) + "\n")


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        return "not a checkpoint folder (it does not exist)"
    marker = folder / MARKER
    if not marker.is_file():
        return f"it has no {MARKER}: its write was cut short (or an older version wrote it)"
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its {MARKER} does not read ({err})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, but {size} were written"
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except (SafetensorError, OSError) as err:
                return f"{name} does not load ({err})"
    return None


def latest_complete(output_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """The newest complete checkpoint of ``output_dir`` (or None), and the newer ones that are not complete."""
    folders = sorted(
        (path for path in Path(output_dir).glob("checkpoint-*") if checkpoint_step(path) is not None),
        key=checkpoint_step,
        reverse=True,
    )
    skipped = []
    for folder in folders:
        if checkpoint_problem(folder) is None:
            return folder, skipped
        skipped.append(folder)
    return None, skipped


def clear_incomplete(checkpoint: str | Path) -> None:
    """Remove a checkpoint folder that a killed run left without its marker, before the step is written again."""
    folder = Path(checkpoint)
    if folder.is_dir() and not (folder / MARKER).is_file():
        shutil.rmtree(folder)


def rotate(output_dir: str | Path, keep: int | None) -> None:
    """Delete the oldest complete checkpoints beyond ``keep`` (incomplete ones are never counted or touched)."""
    if not keep:
        return
    complete = sorted(
        (path for path in Path(output_dir).glob("checkpoint-*") if checkpoint_step(path) is not None),
        key=checkpoint_step,
    )
    complete = [path for path in complete if (path / MARKER).is_file()]
    for folder in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(folder, ignore_errors=True)

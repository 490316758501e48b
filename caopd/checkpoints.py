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
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

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
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        return f"its {MARKER} does not read ({type(err).__name__}: {err})"
    if not isinstance(files, dict) or not all(isinstance(k, str) and type(v) is int for k, v in files.items()):
        return f"its {MARKER} does not list its files (a mapping of file name to size)"
    for name, size in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"its {MARKER} names a file outside the checkpoint ({name})"
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


def checkpoint_damage(checkpoint: str | Path) -> str | None:
    """What in a complete checkpoint is damaged, or None: every JSON file parses, every torch file passes its zip
    checksums, every safetensors tensor is finite. Same-size garbage passes the completion marker; not these."""
    folder = Path(checkpoint)
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if not path.is_file() or path.name == MARKER:
            continue
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as err:
                return f"{name} does not parse as JSON ({type(err).__name__})"
        elif path.suffix in (".pt", ".pth", ".bin"):
            problem = _torch_file_damage(path)
            if problem:
                return f"{name} {problem}"
        elif path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as tensors:
                    for key in tensors.keys():
                        tensor = tensors.get_tensor(key)
                        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                            return f"{name} holds non-finite values in {key}"
            except (SafetensorError, OSError) as err:
                return f"{name} does not load ({err})"
    return None


def _torch_file_damage(path: Path) -> str | None:
    try:
        if not zipfile.is_zipfile(path):
            return "is not a torch save file"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        return f"does not read ({err})"
    return f"is damaged (its part {bad} fails its checksum)" if bad else None


def latest_sound(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that is complete and undamaged, and the newer ones passed over with the reason."""
    passed = []
    for folder in sorted(
        (path for path in Path(output_dir).glob("checkpoint-*") if checkpoint_step(path) is not None),
        key=checkpoint_step,
        reverse=True,
    ):
        reason = checkpoint_problem(folder) or checkpoint_damage(folder)
        if reason is None:
            return folder, passed
        passed.append((folder, reason))
    return None, passed


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
    """Delete the oldest complete checkpoints beyond ``keep`` (incomplete ones are never counted or touched); a limit
    below 1 keeps every checkpoint (the newest one is never deleted)."""
    if not keep or keep < 1:
        return
    complete = sorted(
        (path for path in Path(output_dir).glob("checkpoint-*") if checkpoint_step(path) is not None),
        key=checkpoint_step,
    )
    complete = [path for path in complete if (path / MARKER).is_file()]
    for folder in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(folder, ignore_errors=True)


class TrainingDiverged(RuntimeError):
    """The loss or the weights became non-finite (a learning rate far too large): the run stops before saving."""


def sampling_divergence(error: BaseException, step: int | None, output_dir: str) -> str | None:
    """The divergence line for torch's sampling error on non-finite probabilities (weights a huge step made
    non-finite, sampled from before any loss could show it), or None for any other error."""
    if not (isinstance(error, RuntimeError) and "probability tensor contains" in str(error)):
        return None
    at = f" at step {step + 1}" if step is not None else ""
    return (
        f"training diverged{at}: the model's next-token probabilities are not finite (sampling failed); "
        f"{_newest_sound(output_dir)}, with a lower --learning_rate (or --max_grad_norm)"
    )


def _newest_sound(output_dir: str) -> str:
    latest, _ = latest_complete(output_dir)
    if latest is None:
        return "no checkpoint was saved: start again"
    return f"the newest sound checkpoint is {latest.name}: resume from it (--resume_from_checkpoint latest)"


class CompleteCheckpoints:
    """The Trainer side of complete checkpoints, mixed in before a ``transformers.Trainer`` subclass.

    ``_save_checkpoint`` clears a folder a killed run left at this step, writes the Trainer's files and the subclass's
    own (``_save_extra``), waits for every process, then writes the marker and rotates. ``train(True)`` resumes from
    the newest complete checkpoint (the Trainer's own choice would be the newest folder), kept in ``resume_dir``.
    """

    resume_dir: str | None = None
    run_identity: dict | None = None  # the settings a resume must keep (``caopd.run_guard``), written into checkpoints

    def _save_extra(self, checkpoint: str) -> None:
        """Write what the subclass keeps beside the Trainer's files (every process calls it)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step, stopped before the optimizer uses a non-finite loss (every process agrees)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._stop_if_diverged(not bool(torch.isfinite(loss.detach()).all()), "the loss is not finite")
        return loss

    def _stop_if_diverged(self, here: bool, what: str) -> None:
        """Raise ``TrainingDiverged`` on every process when ``here`` holds on any one."""
        flag = torch.tensor(float(here), device=self.accelerator.device)
        if self.accelerator.reduce(flag, reduction="sum").item() > 0:
            raise TrainingDiverged(
                f"training diverged at step {self.state.global_step + 1}: {what}; {_newest_sound(self.args.output_dir)}"
                ", with a lower --learning_rate (or --max_grad_norm)"
            )

    def _save_checkpoint(self, model, trial) -> None:
        trainable = [getattr(p, "ds_tensor", p) for p in model.parameters() if p.requires_grad]
        finite = all(bool(torch.isfinite(p.detach()).all()) for p in trainable)
        self._stop_if_diverged(not finite, "weights became non-finite and were not saved")
        run_dir = self._get_output_dir(trial=trial)
        checkpoint = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save:
            clear_incomplete(checkpoint)
        self.accelerator.wait_for_everyone()
        keep, self.args.save_total_limit = self.args.save_total_limit, None  # the Trainer would rotate too early
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = keep
        self._save_extra(checkpoint)
        if self.run_identity is not None and self.args.should_save:
            write_text_atomically(Path(checkpoint) / "caopd_run.json", json.dumps(self.run_identity, indent=1) + "\n")
        self.accelerator.wait_for_everyone()  # every process's part is on disk
        if self.args.should_save:
            write_marker(checkpoint, self.state.global_step)
            rotate(run_dir, keep)
        self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            latest, _ = latest_complete(self.args.output_dir)
            resume_from_checkpoint = str(latest) if latest else None
        self.resume_dir = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The Trainer's loading, except for several CPU processes (gloo), where it maps the optimizer state to
        ``args.device`` = ``cpu:0``, which ``torch.load`` cannot restore; there the state is read onto the CPU."""
        several_cpu = self.args.world_size > 1 and self.args.device.type == "cpu"
        if checkpoint is None or not several_cpu or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        for state_file, target in ((OPTIMIZER_NAME, self.optimizer), (SCHEDULER_NAME, self.lr_scheduler)):
            target.load_state_dict(
                torch.load(os.path.join(checkpoint, state_file), map_location="cpu", weights_only=True)
            )

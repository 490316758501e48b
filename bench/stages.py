"""Running an experiment as stages: each a command of the repository's CLIs, skipped once done, resumed if cut.

``bench/reproduce.py`` and the paper's other experiments (``bench/ood.py``, ``bench/continual.py``,
``bench/k_ablation.py``) are plans of (name, command) stages. Every stage's flags are checked by its own parser before
the first one starts; a finished stage leaves ``stages/<name>.done`` with its wall seconds and its command, so a
re-run skips it (and stops if the command changed); a training stage cut short resumes from its newest complete
checkpoint, an evaluation cut short replaces what it left. ``commands.sh`` lists the plan, ``timings.json`` the
seconds of every stage run.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caopd.atomic import write_text_atomically
from caopd.checkpoints import latest_complete
from caopd.checks import CLIError
from caopd.cli import parse_args
from caopd.evaluation import parse_evaluation_args

EVAL_SCRIPTS = {"eval_arithmetic.py": "arithmetic", "eval_tooluse.py": "tooluse", "eval_science.py": "science"}


def check_stage_flags(plan: list[tuple[str, list[str]]]) -> None:
    """Every stage's flags, checked by that stage's own parser before the first stage starts (a bad value would
    otherwise stop the run only when its stage comes, perhaps an hour in)."""
    for name, command in plan:
        try:
            if "main.py" in command:
                parse_args(_flags_of(command, "main.py"))
            for script, task in EVAL_SCRIPTS.items():
                if script in command:
                    parse_evaluation_args(task, _flags_of(command, script))
        except (CLIError, ValueError) as err:
            raise SystemExit(f"error: stage {name}: {err}") from err


def run_stage(name: str, command: list[str], out: Path, force: bool) -> float | None:
    """Run one stage (streaming its output) unless its marker says it is done; its wall seconds, or None if skipped.

    A training stage cut short earlier resumes from its newest complete checkpoint (or starts over when it has
    none), an evaluation cut short replaces what it left; the marker records the stage's command without those
    flags.
    """
    marker, started = out / "stages" / f"{name}.done", out / "stages" / f"{name}.started"
    shown = shlex.join(command)
    if marker.exists() and not force:
        _refuse_another_command(name, out, marker.read_text().splitlines()[1:2], shown, "was done")
        print(f"[stage] {name}: done earlier, skipped ({marker})", flush=True)
        return None
    if started.exists() and not force:  # cut short earlier: it resumes, and only under the command it began with
        _refuse_another_command(name, out, started.read_text().splitlines()[:1], shown, "was begun (and cut short)")
    write_text_atomically(started, f"{shown}\n")
    print(f"[stage] {name}: {shown}", flush=True)
    start = time.monotonic()
    env = {"TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false", **os.environ}
    result = subprocess.run(command + _continue_flags(command, force), cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: stage {name} failed with exit code {result.returncode}; fix it and re-run to resume")
    seconds = time.monotonic() - start
    write_text_atomically(marker, f"{seconds:.1f}\n{shown}\n")
    return seconds


def _refuse_another_command(name: str, out: Path, recorded: list[str], shown: str, what: str) -> None:
    """Stop when a stage's recorded command (markers list it) differs from the one now asked for."""
    if recorded and recorded[0] != shown:
        raise SystemExit(
            f"error: stage {name} in {out} {what} with another command:\n  {recorded[0]}\nnow:\n  {shown}\n"
            "re-run with the same flags, or pass --force (or another --output_dir) to start over"
        )


def _continue_flags(command: list[str], force: bool) -> list[str]:
    """For a stage whose output folder an earlier, unfinished attempt wrote into: a training command resumes (or
    starts over), an evaluation replaces the results it left (they were never marked done)."""
    output = Path(command[command.index("--output_dir") + 1]) if "--output_dir" in command else None
    if output is None:
        return []
    if "main.py" not in command:
        left = any((output / name).exists() for name in ("inference.json", "metrics.json"))
        return ["--overwrite"] if left else []
    latest, _ = latest_complete(output)
    if latest is not None and not force:
        return ["--resume_from_checkpoint", "latest"]
    return ["--overwrite_output_dir"] if any(output.glob("checkpoint-*")) else []


def _flags_of(command: list[str], script: str) -> list[str]:
    return command[command.index(script) + 1 :]


def run_plan(plan: list[tuple[str, list[str]]], out: Path, force: bool) -> dict[str, float]:
    """Check every stage, write ``commands.sh``, run the stages in order; the seconds of each stage ever run."""
    check_stage_flags(plan)
    write_text_atomically(out / "commands.sh", "\n".join(shlex.join(command) for _, command in plan) + "\n")
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() and not force else {}
    for name, command in plan:
        seconds = run_stage(name, command, out, force)
        if seconds is not None:
            timings[name] = seconds
            write_text_atomically(timings_file, json.dumps(timings, indent=2) + "\n")
    return timings

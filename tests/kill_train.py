"""main.py, killed (SIGKILL) at one stage of writing one checkpoint, for test_kill_resume.py.

    python tests/kill_train.py STAGE STEP [main.py flags...]

STAGE is where the process is killed while writing checkpoint-STEP (with SIGKILL, or the signal named by the
environment variable KILL_SIGNAL, e.g. SIGTERM: a scheduler's stop):
  optimizer_written  model, optimizer and scheduler are on disk, the RNG state and trainer state are not
  trainer_saved      every file of the Trainer is on disk, the EMA teacher is not
  teacher_half       the teacher's weights are half written (the file cut short)
  before_marker      everything but the completion marker is on disk
  after_marker       the checkpoint is complete; the run dies before going on
"""

import os
import signal
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import transformers

import caopd.step
import main
from caopd import checkpoints


def install(stage: str, step: int) -> None:
    """Patch the save path so that the process kills itself at ``stage`` of writing checkpoint-``step``."""
    kill_signal = getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL"))
    if kill_signal == signal.SIGINT:
        # Ctrl-C reaches a foreground process; one started from a background job inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt handler. Act as the terminal's foreground process does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    trainers = []
    original_setup = caopd.step.CaOPDStep.setup_caopd  # every backbone's trainer calls it once, at the end of init

    def setup_and_remember(self, *args, **kwargs):
        original_setup(self, *args, **kwargs)
        trainers.append(self)

    caopd.step.CaOPDStep.setup_caopd = setup_and_remember

    def wrap(owner, name: str, after: bool = False, damage=None) -> None:
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            due = trainers and trainers[0].state.global_step == step
            if due and not after:
                os.kill(os.getpid(), kill_signal)
            result = original(*args, **kwargs)
            if due:
                if damage:
                    damage(Path(args[-1]))
                os.kill(os.getpid(), kill_signal)
            return result

        setattr(owner, name, wrapped)

    def cut_teacher_in_half(checkpoint: Path) -> None:
        weights = checkpoint / "teacher" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    stages = {
        "optimizer_written": (transformers.Trainer, "_save_rng_state", False, None),
        "trainer_saved": (caopd.step, "save_teacher", False, None),
        "teacher_half": (caopd.step, "save_teacher", True, cut_teacher_in_half),
        "before_marker": (checkpoints, "write_marker", False, None),
        "after_marker": (checkpoints, "write_marker", True, None),
    }
    if stage not in stages:
        raise SystemExit(f"unknown stage {stage}; choose one of {', '.join(stages)}")
    wrap(*stages[stage])


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    sys.exit(main.main(sys.argv[3:]))

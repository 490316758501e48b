import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import pytest

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tokenizer():
    from tiny_model import real_tokenizer

    return real_tokenizer()


@pytest.fixture
def model(tokenizer):
    from tiny_model import tiny_model

    return tiny_model(tokenizer)


def covers(*scripts: str):
    """Mark a test that runs these documented scripts end to end: tests/test_readme.py fails for a script that
    README.md or docs/ names and no test covers."""
    return pytest.mark.covers(*scripts)


def accelerate_launch(*launcher_flags: str, mixed_precision: str = "no") -> list[str]:
    """The start of an ``accelerate launch`` command of the multi-process tests: one machine, no dynamo, and a free
    port for each launch, since two pytest workers may launch at the same time."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", "0", *launcher_flags]
    return [*command, "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]

"""The README's commands stay runnable: every script it names exists, and every flag it passes is one that the
script accepts (read from the script's own ``--help``)."""

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest
from conftest import ROOT

README = ROOT / "README.md"


def readme_commands() -> list[list[str]]:
    """The command lines of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for command in " ".join(words).split(" && "):
                if command.strip():
                    commands.append(command.split())
    return commands


def script_of(words: list[str]) -> str | None:
    """The repository file a command runs: the first word naming a .py or .sh file of the repository."""
    return next((w for w in words if w.endswith((".py", ".sh")) and not w.startswith("-")), None)


@cache
def help_text(script: str) -> str:
    finished = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert finished.returncode == 0, f"{script} --help failed: {finished.stderr[-1500:]}"
    return finished.stdout


def test_the_readme_has_commands():
    scripts = {script_of(words) for words in readme_commands()}
    assert {"main.py", "eval_tooluse.py", "eval/compare.py", "scripts/setup.sh"} <= scripts


@pytest.mark.parametrize("words", readme_commands(), ids=lambda words: " ".join(words)[:60])
def test_every_readme_command_names_a_script_and_flags_that_exist(words):
    script = script_of(words)
    if script is None:
        return  # e.g. `source .venv/bin/activate`
    assert (ROOT / script).is_file(), f"the README runs {script}, which does not exist"
    flags = [w.strip("[]").split("=")[0] for w in words[words.index(script) + 1 :] if w.strip("[").startswith("--")]
    if script.endswith(".sh") and flags and script != "scripts/run_tests.sh":
        script = "main.py"  # the run scripts pass extra flags on to main.py
    if script.endswith(".py"):
        text = help_text(script)
        unknown = [flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", text)]
        assert not unknown, f"{' '.join(words)}: {script} does not accept {unknown}"

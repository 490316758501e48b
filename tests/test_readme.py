"""The documented commands stay runnable: every script that README.md or docs/ names exists, a test runs it end to
end (marked ``@covers``), and every flag a documented command passes is one the script accepts (read from the
script's own ``--help``)."""

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest
from conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A runnable file of the repository: a script under bench/, scripts/, eval/ or data/, or a top-level entry point.
SCRIPT_PATH = re.compile(r"(?<![\w/.-])((?:bench|scripts|eval|data)/[\w/.-]+\.(?:py|sh)|main\.py|eval_\w+\.py)\b")
# Run by CI itself before the tests (.ci/run -> scripts/run_tests.sh): a failure there fails CI.
RUN_BY_CI = {"scripts/run_tests.sh", "scripts/setup.sh", "scripts/check_gpu_requirements.sh"}
COMMAND_START = ("python", "bash", "accelerate", "caopd-train")


def _words(line: str) -> list[str]:
    return shlex.split(line.replace("\\\n", " "), comments=True)


def documented_commands() -> list[list[str]]:
    """The command lines of the documents: bash blocks (continuation lines joined, comments dropped) and inline
    code that starts with a command (``python ...``, ``bash ...``, ``VAR=1 bash ...``)."""
    commands = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        lines = []
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
            lines += block.replace("\\\n", " ").splitlines()
        prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
        lines += re.findall(r"`([^`\n]+)`", prose)
        for line in lines:
            words = _words(line)
            for command in " ".join(words).split(" && "):
                parts = command.split()
                while parts and re.fullmatch(r"[A-Z_]+=\S*", parts[0]) and not parts[0].startswith("PYTHONPATH="):
                    parts = parts[1:]
                if parts and (parts[0] in COMMAND_START or parts[0].startswith("PYTHONPATH=")):
                    commands.append(parts)
    return commands


def documented_scripts() -> set[str]:
    """Every repository script the documents name, in a command or in prose."""
    named = set()
    for document in DOCUMENTS:
        named |= set(SCRIPT_PATH.findall(document.read_text(encoding="utf-8")))
    return {name for name in named if (ROOT / name).is_file()}


def covered_scripts() -> set[str]:
    """The scripts that some test's ``@covers(...)`` mark says it runs end to end."""
    covered = set()
    for test_file in (ROOT / "tests").glob("test_*.py"):
        for arguments in re.findall(r"@covers\(([^)]*)\)", test_file.read_text(encoding="utf-8")):
            covered |= set(re.findall(r"\"([^\"]+)\"", arguments))
    return covered


def script_of(words: list[str]) -> str | None:
    """The repository file a command runs: the first word naming a .py or .sh file of the repository."""
    return next((w for w in words if w.endswith((".py", ".sh")) and not w.startswith("-")), None)


@cache
def help_text(script: str, *before_help: str) -> str:
    command = [sys.executable, script, *before_help, "--help"]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert finished.returncode == 0, f"{script} --help failed: {finished.stderr[-1500:]}"
    return finished.stdout


def test_the_documents_have_commands():
    scripts = {script_of(words) for words in documented_commands()}
    assert {"main.py", "eval_tooluse.py", "eval/compare.py", "scripts/setup.sh", "bench/prefix.py"} <= scripts


def test_every_documented_script_has_a_test_that_runs_it():
    run_by_ci = (ROOT / ".ci" / "run").read_text() + (ROOT / "scripts" / "run_tests.sh").read_text()
    assert all(script in run_by_ci for script in RUN_BY_CI - {"scripts/run_tests.sh"})
    assert "scripts/run_tests.sh" in (ROOT / ".ci" / "run").read_text()
    covered = covered_scripts()
    assert covered <= {path.relative_to(ROOT).as_posix() for path in ROOT.rglob("*.[ps][yh]")}, "a @covers typo"
    untested = sorted(documented_scripts() - covered - RUN_BY_CI)
    assert not untested, f"documented scripts that no test runs end to end (mark one with @covers): {untested}"


@pytest.mark.parametrize("words", documented_commands(), ids=lambda words: " ".join(words)[:60])
def test_every_documented_command_names_a_script_and_flags_that_exist(words):
    if words[0] == "caopd-train":  # the console script pyproject.toml declares: main.py's CLI
        words = ["python", "main.py", *words[1:]]
    script = script_of(words)
    if script is None:
        return  # e.g. `source .venv/bin/activate`
    assert (ROOT / script).is_file(), f"the documents run {script}, which does not exist"
    flags = [w.strip("[]").split("=")[0] for w in words[words.index(script) + 1 :] if w.strip("[").startswith("--")]
    if script.endswith(".sh") and flags and script != "scripts/run_tests.sh":
        script = "main.py"  # the run scripts pass extra flags on to main.py
    if script.endswith(".py"):
        chosen = words.index("--backbone") if "--backbone" in words else None  # main.py lists a backbone's flags
        text = help_text(script, *(words[chosen : chosen + 2] if chosen is not None else []))
        unknown = [flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", text)]
        assert not unknown, f"{' '.join(words)}: {script} does not accept {unknown}"


def test_the_readme_is_a_page_not_a_manual():
    """At most 300 lines: what it is, set-up, the main commands, the arms, the results; the rest is in docs/."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300

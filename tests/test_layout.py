"""The code's layering: the library (caopd/) never imports the evaluation scripts' folder (eval/)."""

import ast
import subprocess
import sys
from pathlib import Path

import tomllib
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_library_module_imports_eval():
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in _imported_modules(path) if name.split(".")[0] == "eval")
        for path in sorted((ROOT / "caopd").rglob("*.py"))
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_the_rule_sees_both_import_forms(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import eval.compare\nfrom eval.compare import markdown_table\nimport evaluate\n")
    assert _imported_modules(probe) == {"eval.compare", "evaluate"}


def _pins(path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (its ``-r`` includes followed), by normalized name."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins |= _pins(path.parent / line[3:].strip())
        elif "==" in line:
            name, version = line.split("==")
            pins[canonicalize_name(name.split("[")[0])] = version
    return pins


def test_the_declared_dependency_ranges_hold_the_tested_pins():
    """pyproject.toml's ranges (what `pip install .` accepts) contain the versions requirements*.txt pin (what the
    tests run on), for the runtime set, the GPU extra and the dev extra; every pinned runtime package is declared."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {
        "requirements.txt": project["dependencies"],
        "requirements-gpu.txt": project["dependencies"] + project["optional-dependencies"]["gpu"],
        "requirements-dev.txt": project["dependencies"] + project["optional-dependencies"]["dev"],
    }
    for file, declared in groups.items():
        pins = _pins(ROOT / file)
        for requirement in map(Requirement, declared):
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{name} is declared but {file} does not pin it"
            assert requirement.specifier.contains(pins[name]), f"{file} pins {name} {pins[name]} outside {requirement}"
    assert set(_pins(ROOT / "requirements.txt")) <= {
        canonicalize_name(Requirement(r).name) for r in groups["requirements.txt"]
    }
    assert project["scripts"]["caopd-train"] == "main:main"


def test_the_console_script_is_main(tmp_path):
    """`caopd-train` (installed by scripts/setup.sh) is main.py's CLI, from any folder."""
    script = Path(sys.executable).parent / "caopd-train"
    assert script.is_file(), "caopd-train is not installed: run scripts/setup.sh (pip install --no-deps -e .)"
    finished = subprocess.run(
        [str(script), "--output_dir", str(tmp_path / "o"), "--num_generations", "0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 2 and "argument --num_generations: must be a positive integer" in finished.stderr

"""The code's layering: the library (caopd/) never imports the evaluation scripts' folder (eval/)."""

import ast

from conftest import ROOT


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

"""The method does not depend on its judge or its data pipeline: nothing under ``src/ardrag`` imports
``benchmark`` or ``datamodules`` (checked on every import statement, module-level or inside a function, and on
``importlib.import_module`` calls with a literal name)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("benchmark", "datamodules")


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.lineno, node.args[0].value))
    return out


def _violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        for line, name in _imported(ast.parse(path.read_text(), str(path))):
            if name.split(".")[0] in FORBIDDEN:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {name}")
    return bad


def test_src_ardrag_imports_neither_benchmark_nor_datamodules():
    assert _violations(ROOT / "src" / "ardrag") == []


def test_the_scan_finds_each_kind_of_import(tmp_path):
    pkg = tmp_path / "ardrag"
    pkg.mkdir()
    (pkg / "a.py").write_text("import benchmark.metrics\nfrom os import path\n")
    (pkg / "b.py").write_text("def f():\n    from datamodules.shards import x\n    return x\n")
    (pkg / "c.py").write_text("import importlib\nm = importlib.import_module('benchmark.eval')\n")
    (pkg / "d.py").write_text("from . import a\nimport benchmarking_tools\n")  # relative and look-alike: fine
    assert _violations(pkg) == [
        "ardrag/a.py:1 imports benchmark.metrics",
        "ardrag/b.py:2 imports datamodules.shards",
        "ardrag/c.py:2 imports benchmark.eval",
    ]


def test_modules_over_500_lines_say_why_at_their_top():
    """A module grows past 500 lines only with a one-line reason as its first line ("# Over 500 lines: ...")."""
    long = []
    for folder in ("src/ardrag", "datamodules", "benchmark"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 500 and not text.startswith("# Over 500 lines: "):
                long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert long == []

"""The scripts beside the package (benchmarks/, recipes/, examples/) import only what exists.

Nothing else runs them in the suite, so a name renamed in `surge` (or in a sibling benchmark
they import from) would otherwise surface only when someone runs the benchmark. Each
`from surge... import name` is checked against the imported module, each `from sibling import
name` against the sibling script's top-level definitions, without running the scripts.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for folder in ("benchmarks", "recipes", "examples")
                 for p in (ROOT / folder).rglob("*.py"))


def top_level_names(path: Path) -> set[str]:
    """What a module defines or imports at its top level."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def is_submodule(package: ModuleType, name: str) -> bool:
    return hasattr(package, "__path__") and (
        importlib.util.find_spec(f"{package.__name__}.{name}") is not None)


def missing_names(script: Path) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            missing += [a.name for a in node.names if a.name.startswith("surge.")
                        and importlib.util.find_spec(a.name) is None]
        if not isinstance(node, ast.ImportFrom) or node.level or node.module is None:
            continue
        sibling = script.with_name(f"{node.module}.py")
        if node.module == "surge" or node.module.startswith("surge."):
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names
                        if not hasattr(module, a.name) and not is_submodule(module, a.name)]
        elif sibling.is_file():
            defined = top_level_names(sibling)
            missing += [f"{node.module}.{a.name}" for a in node.names if a.name not in defined]
    return missing


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_imports_names_that_exist(script: Path) -> None:
    assert missing_names(script) == []


def test_a_renamed_name_is_found(tmp_path: Path) -> None:
    script = tmp_path / "bench.py"
    (tmp_path / "helper.py").write_text("def kept():\n    pass\n")
    script.write_text("from surge.runtimes.onnx_runner import onnx_signature, session_signature\n"
                      "from helper import kept, gone\n")
    assert missing_names(script) == ["surge.runtimes.onnx_runner.onnx_signature", "helper.gone"]

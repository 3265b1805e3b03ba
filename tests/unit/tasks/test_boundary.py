"""The library never names its examples: no module of `surge` imports `surge_examples` (they
reach it only through entry points), and the packages that serve every task name none."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import surge

LIBRARY = Path(surge.__file__).parent
EXAMPLES = "surge_examples"
TASK_AGNOSTIC = ("train", "optimize", "evaluate", "tuning", "bench")
EXAMPLE_WORDS = re.compile(r"fashion|detection|centernet", re.IGNORECASE)


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an `import` or `from ... import` names, at any depth (function-local
    imports included), plus string arguments of importlib.import_module / __import__ calls."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = ast.unparse(node.func)
            if name.endswith(("import_module", "__import__")) and isinstance(
                    node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _library_files() -> list[Path]:
    return sorted(p for p in LIBRARY.rglob("*.py") if "grpc_gen" not in p.parts)


def test_the_walk_sees_function_local_imports() -> None:
    source = "def f():\n    from surge_examples.fashion import data\n    import x.y\n" \
             "    importlib.import_module('surge_examples.detection.model')\n"
    assert imported_modules(ast.parse(source)) == {
        "surge_examples.fashion", "x.y", "surge_examples.detection.model"}


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(LIBRARY)))
def test_no_library_module_imports_the_examples(path: Path) -> None:
    modules = imported_modules(ast.parse(path.read_text(), str(path)))
    offending = sorted(m for m in modules if m == EXAMPLES or m.startswith(EXAMPLES + "."))
    assert not offending, f"{path} imports {offending}; reach examples through the registry"


@pytest.mark.parametrize("package", TASK_AGNOSTIC)
def test_task_agnostic_packages_name_no_example(package: str) -> None:
    hits = [f"{path.relative_to(LIBRARY)}:{number}: {line.strip()}"
            for path in sorted((LIBRARY / package).rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if EXAMPLE_WORDS.search(line)]
    assert not hits, "\n".join(hits)

"""Code shape: every source file under 500 lines, every function under 60 (generated gRPC code
excepted). Long files and functions are where unrelated concerns pile up unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
EXCLUDED = (SRC / "surge" / "protocol" / "grpc_gen",)
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def source_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py")
                  if not any(p.is_relative_to(excluded) for excluded in EXCLUDED))


def long_functions(path: Path, root: Path = SRC) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}() {length} lines")
    return found


def test_files_are_under_500_lines() -> None:
    files = source_files()
    assert len(files) > 50
    too_long = [f"{p.relative_to(SRC)} {n} lines" for p in files
                if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert too_long == []


def test_functions_are_under_60_lines() -> None:
    assert [f for p in source_files() for f in long_functions(p)] == []


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path / "long.py", tmp_path) == [
        f"long.py:5 long() {MAX_FUNCTION_LINES + 1} lines"]

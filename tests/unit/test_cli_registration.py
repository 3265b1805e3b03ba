"""The CLI is built by registering plain command functions; plugins add theirs after."""

from __future__ import annotations

import ast
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import surge.cli
from tests.cli_runner import run_cli

COMMANDS_DIR = Path(surge.cli.__file__).parent / "commands"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth, lazy imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from . import x -> surge.commands.x
                module = ".".join(["surge", "commands"][:3 - node.level] + ([module] if module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_command_module_imports_the_cli() -> None:
    files = sorted(COMMANDS_DIR.glob("*.py"))
    assert len(files) > 5
    offenders = {f.name: sorted(n for n in imported_modules(f)
                                if n == "surge.cli" or n.startswith("surge.cli."))
                 for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_walk_sees_a_cli_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from surge.cli import app\n")
    assert "surge.cli" in imported_modules(bad)
    bad.write_text("from surge import cli\n")
    assert "surge.cli" in imported_modules(bad)


def test_every_command_module_is_registered() -> None:
    app = surge.cli.build_app(plugins=False)
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    assert {"inspect", "predict", "models", "evaluate", "demo", "serve", "bench", "optimize",
            "tune", "report", "train"} <= names
    assert "data" in {g.name for g in app.registered_groups}
    registered = {c.callback.__module__ for c in app.registered_commands if c.callback}
    modules = {f"surge.commands.{f.stem}" for f in COMMANDS_DIR.glob("*.py")
               if f.stem not in ("__init__", "data")}
    assert modules <= registered


def register_hello(app: typer.Typer) -> None:
    """A plugin: one top-level command and one in the `data` group."""

    def hello(name: str = "world") -> None:
        print(f"hello {name}")

    app.command("hello")(hello)
    surge.cli.command_group(app, "data").command("make-hello")(hello)


def register_broken(app: typer.Typer) -> None:
    raise RuntimeError("needs a newer surge")


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    points = [EntryPoint("hello", f"{__name__}:{target}", surge.cli.PLUGIN_GROUP)]
    monkeypatch.setattr(surge.cli, "entry_points",
                        lambda group: points if group == surge.cli.PLUGIN_GROUP else [])


def test_plugins_register_after_the_built_in_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, "register_hello")
    app = surge.cli.build_app()
    runner = CliRunner()
    assert runner.invoke(app, ["hello", "--name", "surge"]).stdout.strip() == "hello surge"
    assert runner.invoke(app, ["data", "make-hello"]).stdout.strip() == "hello world"
    assert "hello" not in {c.name for c in surge.cli.build_app(plugins=False).registered_commands}


def test_a_broken_plugin_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fake_entry_points(monkeypatch, "register_broken")
    code, _, err = run_cli(["models", "."], capsys)
    assert code == 2
    assert "CLI plugin 'hello'" in err
    assert "needs a newer surge" in err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_command_group_is_named() -> None:
    with pytest.raises(surge.cli.SurgeError, match="no command group 'nope'"):
        surge.cli.command_group(surge.cli.build_app(plugins=False), "nope")

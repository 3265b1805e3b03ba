"""The `surge` command line: a thin layer over the Python API (`surge.api`).

`build_app` registers the built-in commands of `surge.commands`, then every plugin: an entry
point in the group `surge.cli` naming a callable `register(app: typer.Typer) -> None`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from surge.commands import bench, convert, data, demo, models, optimize, report, serve, train, tune
from surge.errors import SurgeError

PLUGIN_GROUP = "surge.cli"
HELP = "Serve, optimize, evaluate and train deep-learning models under high concurrency."

# top-level commands in the order `surge --help` lists them
COMMANDS: tuple[Callable[..., Any], ...] = (
    models.inspect, models.predict, models.models, models.evaluate, demo.demo, serve.serve,
    bench.bench, convert.convert, optimize.optimize, tune.tune, report.report,
)


def build_app(plugins: bool = True) -> typer.Typer:
    """The Typer app: built-in commands, then plugins (which may add or extend commands)."""
    app = typer.Typer(help=HELP, no_args_is_help=True, pretty_exceptions_enable=False,
                      add_completion=False)
    for command in COMMANDS:
        app.command()(command)
    # recipes take `key=value` arguments, so -h is the short help there as well
    app.command(context_settings={"help_option_names": ["-h", "--help"]})(train.train)
    data_app = typer.Typer(help=data.HELP, no_args_is_help=True)
    data_app.command("list")(data.list_registered)
    app.add_typer(data_app, name="data")
    if plugins:
        register_plugins(app)
    return app


def command_group(app: typer.Typer, name: str) -> typer.Typer:
    """The sub-command group `name` of `app` (e.g. "data"), for a plugin to add commands to."""
    for group in app.registered_groups:
        if group.name == name and group.typer_instance is not None:
            return group.typer_instance
    raise SurgeError(f"the CLI has no command group {name!r}")


def register_plugins(app: typer.Typer) -> list[str]:
    """Call each `surge.cli` entry point's `register(app)`; returns the names registered."""
    names = []
    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        try:
            register = point.load()
            register(app)
        except Exception as exc:
            raise SurgeError(f"CLI plugin {point.name!r} ({point.value}) failed to register: "
                             f"{type(exc).__name__}: {exc}") from exc
        names.append(point.name)
    return names


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SURGE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        build_app()(args, prog_name="surge")
    except SurgeError as exc:
        if debug:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False,
                                   soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

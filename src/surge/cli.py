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
import typer.main
from rich.console import Console
from rich.markup import escape

# Typer carries its own copy of click: these are the exceptions its parsing raises.
from typer._click.exceptions import BadParameter, MissingParameter, NoArgsIsHelpError, UsageError

from surge.commands import bench, convert, data, demo, models, optimize, report, serve, train, tune
from surge.errors import SurgeError, shown

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
        code = run(build_app(), args)
    except SurgeError as exc:
        if debug:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False,
                                   soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


def run(app: typer.Typer, args: list[str]) -> int:
    """Run the CLI on `args`; its exit code. Click's usage errors become SurgeErrors, so that
    they print as every other error does: one line naming the value, exit code 2."""
    command = typer.main.get_command(app)
    refuse_empty_paths(command)
    try:
        result = command.main(args, prog_name="surge", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        return exc.exit_code  # the help is printed already
    except UsageError as exc:
        raise SurgeError(usage_error_line(exc)) from exc
    except typer.Abort:
        Console(stderr=True).print("aborted")
        return 1
    # standalone_mode=False returns the exit code of a typer.Exit (--help: 0)
    return result if type(result) is int else 0


# What typer's checks (pydantic's error types) mean, said of the value given.
REASONS = {
    "greater_than_equal": "must be at least {ge}", "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}", "less_than": "must be less than {lt}",
    "int_parsing": "must be a whole number", "int_from_float": "must be a whole number",
    "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
}


def usage_error_line(error: UsageError) -> str:
    """Click's usage error in one line: a bad value as `--option 'value': why`, anything else
    (a missing argument, an unknown option) with the command's --help to read."""
    if isinstance(error, BadParameter) and not isinstance(error, MissingParameter) \
            and error.param is not None:
        check = _first_check(error)
        return f"{parameter_label(error.param)}{_given(check)}: {_reason(error, check)}"
    command = error.ctx.command_path if error.ctx is not None else "surge"
    message = error.format_message().strip().rstrip(".")
    return f"{command}: {message[:1].lower()}{message[1:]} (see '{command} --help')"


def _first_check(error: BadParameter) -> dict[str, Any] | None:
    """The failed check of typer's validation (a pydantic error), when that is the cause."""
    errors = getattr(error.__cause__, "errors", None)
    found = errors() if callable(errors) else None
    return dict(found[0]) if found else None


def _given(check: dict[str, Any] | None) -> str:
    return f" {shown(check['input'])}" if check is not None and "input" in check else ""


def _reason(error: BadParameter, check: dict[str, Any] | None) -> str:
    reason = REASONS.get(check["type"]) if check is not None else None
    if reason is not None and check is not None:
        return reason.format(**check.get("ctx", {}))
    message = error.message.strip().rstrip(".")
    return message[:1].lower() + message[1:]


def parameter_label(param: Any) -> str:
    """How the user wrote a parameter: its long option, or an argument's name in capitals."""
    if param.param_type_name == "argument":
        return str(param.name).upper()
    return max(param.opts, key=len)


def refuse_empty_paths(command: Any) -> None:
    """Refuse "" for every path parameter of `command` and its sub-commands, plugins' included:
    typer would take it as Path(""), which is the current folder."""
    for param in command.params:
        if getattr(getattr(param, "type_descriptor", None), "is_path", False):
            param.process_value = _refusing_empty(param, param.process_value)
    for sub in getattr(command, "commands", {}).values():
        refuse_empty_paths(sub)


def _refusing_empty(param: Any, process_value: Callable[[Any, Any], Any]
                    ) -> Callable[[Any, Any], Any]:
    def process(ctx: Any, value: Any) -> Any:
        if value == "":
            raise SurgeError(f"{parameter_label(param)} '': an empty path (it would mean the "
                             "current folder: write . for that)")
        return process_value(ctx, value)

    return process

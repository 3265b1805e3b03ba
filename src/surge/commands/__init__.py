"""CLI commands: plain functions, one module per area, registered by `surge.cli.build_app`.

They parse their options, call the Python API (`surge.api`) and print what it returns. None of
them imports `surge.cli`: the CLI depends on the commands, never the other way round.
"""

from rich.console import Console

console = Console()

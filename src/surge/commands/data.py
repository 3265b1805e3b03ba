"""`surge data`: datasets. `surge data list` shows what the registry knows; plugins add their
own dataset builders to this group (e.g. the examples' `surge data fashion-detection`)."""

from __future__ import annotations

from rich.table import Table

from surge.commands import console

HELP = "Datasets: list them, and build those plugins know how to make."


def list_registered() -> None:
    """Registered tasks, datasets and model builders (the library's and its plugins')."""
    from surge.tasks import REGISTRY

    table = Table("kind", "names")
    table.add_row("tasks", ", ".join(REGISTRY.task_names()))
    table.add_row("datasets", ", ".join(REGISTRY.dataset_names()))
    table.add_row("models", ", ".join(REGISTRY.model_names()) or "-")
    console.print(table)

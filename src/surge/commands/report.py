"""`surge report`: render the last tuning report of a model as HTML + PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from surge.commands import console


def report(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    model: Annotated[str, typer.Option(help="Model whose tuning report to render.")],
    trace: Annotated[Path | None, typer.Option(
        help="JSON of benchmarks/surge_load.py: add its load-trace plot (p99, goodput, "
             "variant mix over time) and summary.")] = None,
) -> None:
    """Write REPO/MODEL/tuning/report.html with the Pareto front, latencies and every
    configuration tried (from the JSON that `surge tune` saved)."""
    from surge.report import render_report
    from surge.repository import Repository

    notes: list[str] = []
    path = render_report(Repository(repo).model_dir(model), trace, notes)
    console.print(f"report: {path}")
    for note in notes:  # what the plots leave out of a report too large to draw whole
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    for png in sorted(path.parent.glob("*.png")):
        console.print(f"  plot: {png}")

"""`surge train CONFIG [--nproc N] [--nnodes M --node-rank R --rdzv host:port] [key=value ...]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from surge.commands import exit_on_sigterm


def train(
    config: Annotated[Path, typer.Argument(help="Training recipe YAML (see recipes/).")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value overrides, dotted for nested keys: precision=bf16 optimizer.lr=1e-3")] = None,
    nproc: Annotated[int, typer.Option(help="Processes on this machine.")] = 1,
    nnodes: Annotated[int, typer.Option(help="Machines taking part.")] = 1,
    node_rank: Annotated[int | None, typer.Option(
        help="This machine's rank (static rendezvous); omit for dynamic rendezvous.")] = None,
    rdzv: Annotated[str | None, typer.Option(
        help="Rendezvous endpoint host:port (multi-machine).")] = None,
    max_restarts: Annotated[int, typer.Option(
        help="Restart all workers up to K times after a failure, from the last checkpoint.")] = 0,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the newest checkpoint in checkpoint.dir.")] = False,
    join_timeout: Annotated[float, typer.Option(
        help="Seconds every machine has to join the rendezvous (multi-machine).")] = 600.0,
) -> None:
    """Train a model from a recipe (DDP, pipeline or FSDP2; fp32, bf16 or fp16) via torchrun."""
    from surge.api import train as run_train
    from surge.train import LaunchOptions

    options = LaunchOptions(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv=rdzv,
                            max_restarts=max_restarts, resume=resume,
                            join_timeout_s=join_timeout)
    with exit_on_sigterm():
        run_train(config, overrides or [], options)

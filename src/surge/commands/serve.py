"""`surge serve`: serve a model repository over V2 HTTP, gRPC and Prometheus metrics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from surge.commands import console
from surge.errors import SurgeError


def _models(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise SurgeError(f"--models {value!r} names no model")
    return names


def serve(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    http_port: Annotated[int, typer.Option(min=0, max=65535, help="V2 HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=0, max=65535, help="V2 gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(min=0, max=65535,
                                              help="Prometheus metrics port.")] = 8002,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] =
        "127.0.0.1",
    api_key: Annotated[str | None, typer.Option(
        help="Require 'Authorization: Bearer KEY' on all but health endpoints.",
        envvar="SURGE_API_KEY")] = None,
    models: Annotated[str | None, typer.Option(help="Serve only these models (a,b).")] = None,
    grace: Annotated[float, typer.Option(min=0.0, help="Seconds SIGTERM waits for accepted "
                                                       "requests.")] = 30.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body (MiB).")] =
        64.0,
    idle_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a connection with no "
                                                "request in progress stays open.")] = 75.0,
    header_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a request's headers "
                                                  "(gRPC: the handshake) may take.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(min=0.001, help="Longest pause (s) while a "
                                                "request body arrives.")] = 60.0,
    max_connections: Annotated[int | None, typer.Option(min=1, help="Open connections per port "
                               "(default: a quarter of the open-file limit, at most 4096).")] =
        None,
) -> None:
    """Serve models until SIGTERM/SIGINT, then drain accepted requests and exit 0."""
    from surge.api import serve as run_server
    from surge.server.limits import ConnectionLimits
    from surge.server.process import Endpoints, ServeOptions

    limits = ConnectionLimits(idle_timeout_s=idle_timeout, header_timeout_s=header_timeout,
                              body_timeout_s=body_timeout)
    if max_connections is not None:
        limits = replace(limits, max_connections=max_connections)
    options = ServeOptions(
        host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        api_key=api_key, models=_models(models), grace_s=grace,
        max_body_bytes=int(max_body_mb * 1024 * 1024), limits=limits,
    )

    def started(endpoints: Endpoints) -> None:
        console.print(f"[bold green]surge serving[/bold green] {repo}")
        console.print(f"  HTTP    {endpoints.http}/v2")
        console.print(f"  gRPC    {endpoints.grpc}")
        console.print(f"  metrics {endpoints.metrics}", highlight=False)
        if api_key:
            console.print("  API key required (Authorization: Bearer ...)")

    run_server(repo, options, started)
    console.print("surge: drained and stopped")

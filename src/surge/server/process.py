"""`surge serve`: the engine behind HTTP, gRPC and metrics endpoints, drained on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import start_http_server

from surge.errors import SurgeError
from surge.repository import Repository
from surge.server.app import DEFAULT_MAX_BODY, V2App
from surge.server.grpc_server import start_grpc_server

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """Where and how the server listens."""

    host: str = "127.0.0.1"  # loopback unless asked: the server has no TLS
    http_port: int = 8000  # 0 = any free port
    grpc_port: int = 8001
    metrics_port: int = 8002
    api_key: str | None = None  # bearer token on every endpoint except health
    models: tuple[str, ...] | None = None  # serve only these models (default: all)
    grace_s: float = 30.0  # how long a drain waits for accepted requests
    max_body_bytes: int = DEFAULT_MAX_BODY


@dataclass(frozen=True)
class Endpoints:
    """The addresses the server listens on, as clients write them."""

    http: str
    grpc: str
    metrics: str


def _bind(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_server((host, port), backlog=2048)
    except OSError as exc:
        raise SurgeError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class SurgeServer:
    """Starts the engine and the three front ends; `drain()` stops them in order."""

    def __init__(self, engine: Any, options: ServeOptions) -> None:
        self.engine = engine
        self.options = options
        self.app = V2App(engine, api_key=options.api_key, max_body_bytes=options.max_body_bytes)
        self._http: uvicorn.Server | None = None
        self._http_socket: socket.socket | None = None
        self._grpc: Any = None
        self._grpc_servicer: Any = None
        self._metrics: Any = None

    async def start(self) -> Endpoints:
        options = self.options
        await self.engine.start()
        self._http_socket = _bind(options.host, options.http_port)
        config = uvicorn.Config(
            self.app, http="httptools", loop="none", lifespan="off", access_log=False,
            log_level="warning", server_header=False, date_header=False, proxy_headers=False,
            timeout_keep_alive=75, backlog=2048, timeout_graceful_shutdown=max(1, round(options.grace_s)),
        )
        # startup()/shutdown() rather than serve(): serve() installs its own signal handlers,
        # and the drain order (front ends first, then the engine) is decided here.
        config.load()
        self._http = uvicorn.Server(config)
        self._http.lifespan = config.lifespan_class(config)
        await self._http.startup(sockets=[self._http_socket])
        self._grpc, self._grpc_servicer, grpc_port = await start_grpc_server(
            self.engine, options.host, options.grpc_port, options.api_key
        )
        self._metrics = start_http_server(
            options.metrics_port, addr=options.host, registry=self.engine.metrics.registry
        )
        host = _url_host(options.host)
        http_port = self._http_socket.getsockname()[1]
        metrics_port = self._metrics[0].server_address[1]
        return Endpoints(f"http://{host}:{http_port}", f"{host}:{grpc_port}",
                         f"http://{host}:{metrics_port}/metrics")

    async def drain(self) -> None:
        """Refuse new work, finish what was accepted (within the grace period), stop."""
        started = time.monotonic()
        self.app.accepting = False
        if self._grpc_servicer is not None:
            self._grpc_servicer.accepting = False
        waits = []
        if self._http is not None and self._http_socket is not None:
            # Closes the listener, lets open requests finish, closes idle keep-alive connections.
            waits.append(self._http.shutdown(sockets=[self._http_socket]))
        if self._grpc is not None:
            waits.append(self._grpc.stop(self.options.grace_s))
        await asyncio.gather(*waits)
        remaining = max(1.0, self.options.grace_s - (time.monotonic() - started))
        await self.engine.stop(remaining)
        if self._metrics is not None:
            self._metrics[0].shutdown()
            self._metrics[0].server_close()


async def serve_until_signal(
    engine: Any, options: ServeOptions, on_started: Callable[[Endpoints], None] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = SurgeServer(engine, options)
    try:
        endpoints = await server.start()
        if on_started is not None:
            on_started(endpoints)
        await stop.wait()
        log.info("draining: finishing accepted requests (grace %.0f s)", options.grace_s)
    finally:
        await server.drain()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def serve(
    repository: Path | str,
    options: ServeOptions | None = None,
    on_started: Callable[[Endpoints], None] | None = None,
) -> None:
    """Serve a model repository until SIGTERM/SIGINT (the `surge serve` command)."""
    import uvloop

    from surge.engine import Engine

    options = options or ServeOptions()
    models = list(options.models) if options.models else None
    engine = Engine(Repository(repository), models=models)
    uvloop.run(serve_until_signal(engine, options, on_started))

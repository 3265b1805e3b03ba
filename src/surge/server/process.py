"""`surge serve`: the engine behind HTTP, gRPC and metrics endpoints, drained on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, multiprocess

from surge.configfile import write_text_atomically
from surge.engine import InferenceEngine
from surge.engine.ondemand import ResidencyOptions
from surge.engine.response_cache import check_cache_size, size_cache
from surge.engine.triton_metrics import METRIC_NAMES, TritonSource, metric_names
from surge.errors import SurgeError
from surge.repository import Repository
from surge.server.app import DEFAULT_MAX_BODY, V2App
from surge.server.frontends import METRICS_DIR_ENV
from surge.server.grpc_listener import start_grpc_h2_server
from surge.server.grpc_server import InferenceServicer, start_grpc_server
from surge.server.limits import ConnectionLimits, guarded_protocol
from surge.server.metrics_port import MetricsApp
from surge.server.model_control import RepositoryControl, control_for
from surge.server.production import Production, ProductionOptions
from surge.server.shared_memory import MODES as SHARED_MEMORY_MODES
from surge.server.shared_memory import registry_for
from surge.server.sockets import close_listener, reserve_all

log = logging.getLogger(__name__)


GRPC_SERVERS = ("surge", "grpcio")
# How long a drain still answers requests arriving on open HTTP keep-alive connections.
HTTP_LINGER_S = 0.25
# How long the requests cut off as the grace ends have to send their 503 before their
# connections close.
CUT_OFF_ANSWER_S = 1.0


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
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)  # every listener's
    # TLS, scoped keys, access log, tracing, repository polling (docs/production.md)
    production: ProductionOptions = field(default_factory=ProductionOptions)
    # Join this Ray cluster as a driver ("auto": the one this machine belongs to), so that
    # models placed on the cluster run as actors on its compute nodes.
    ray_address: str | None = None
    # Let several front ends on this machine listen on the same ports (SO_REUSEPORT): the
    # kernel spreads connections among them.
    reuse_port: bool = False
    # Front-end processes sharing the ports, each with its own share of the instances
    # (surge/server/frontends.py); 1 serves from this process.
    frontends: int = 1
    # When models load (eager / on demand) and the memory budget eviction keeps
    # (docs/many-models.md).
    residency: ResidencyOptions = field(default_factory=ResidencyOptions)
    # The server's log level (debug, info, warning, error) on stderr; None leaves logging as
    # the embedding application configured it.
    log_level: str | None = None
    # The gRPC listener's stack: "surge" (HTTP/2 on the event loop, surge/server/grpc_h2.py)
    # or "grpcio" (grpc core's server through grpc.aio).
    grpc_server: str = "surge"
    # Triton's system shared-memory extension: "system" (clients register regions and name
    # them in place of tensor bytes) or "none" (its endpoints refused).
    shared_memory: str = "system"
    # Bytes of the response cache that models with `response_cache: true` use (0: none;
    # each front end holds its own; surge/engine/response_cache.py).
    response_cache_bytes: int = 0
    # The metric names the metrics port exports: Surge's surge_*, Triton's nv_* (made from
    # the statistics at scrape time, surge/engine/triton_metrics.py), or both.
    metrics_names: tuple[str, ...] = METRIC_NAMES

    def __post_init__(self) -> None:
        from surge.server.serve_checks import check_serve_options

        object.__setattr__(self, "models", check_serve_options(self))
        if self.grpc_server not in GRPC_SERVERS:
            raise SurgeError(f"--grpc-server {self.grpc_server!r}: use "
                             f"{' or '.join(GRPC_SERVERS)}")
        if self.shared_memory not in SHARED_MEMORY_MODES:
            raise SurgeError(f"--shared-memory {self.shared_memory!r}: use "
                             f"{' or '.join(SHARED_MEMORY_MODES)}")
        _check_exposure(self.host, (self.http_port, self.grpc_port, self.metrics_port),
                        self.api_key)
        if self.log_level is not None:  # before any model loads, not when logging starts
            check_log_level(self.log_level)
        if (not isinstance(self.response_cache_bytes, int) or self.response_cache_bytes < 0
                or isinstance(self.response_cache_bytes, bool)):
            raise SurgeError(f"--response-cache-bytes {self.response_cache_bytes!r}: give 0 "
                             "(no cache) or a size in bytes")
        check_cache_size(self.response_cache_bytes, self.response_cache_bytes)
        object.__setattr__(self, "metrics_names", metric_names(self.metrics_names))


def _check_exposure(host: str, ports: tuple[int, int, int], api_key: str | None) -> None:
    """An address to bind (an empty one would be every interface), a port per listener, and
    a key that is not empty (one would leave the server open)."""
    if api_key is not None and not api_key.strip():
        raise SurgeError("--api-key '' (or SURGE_API_KEY set empty) would leave the server "
                         "open: give a key, or leave the option out")
    if not host.strip():
        raise SurgeError(f"--host {host!r}: name the address to bind, e.g. 127.0.0.1 (this "
                         "machine only) or 0.0.0.0 (every interface)")
    named = [(f"--{kind}-port", port) for kind, port in
             zip(("http", "grpc", "metrics"), ports, strict=True) if port]
    for index, (option, port) in enumerate(named):
        for other, other_port in named[index + 1:]:
            if port == other_port:
                raise SurgeError(f"{option} {port} and {other} {port}: each listener needs its "
                                 f"own port")


@dataclass(frozen=True)
class Endpoints:
    """The addresses the server listens on, as clients write them."""

    http: str
    grpc: str
    metrics: str


def write_endpoints(path: Path, endpoints: Endpoints) -> None:
    """`surge serve --endpoints-file`: all at once (a rename), so a reader polling for the file
    never sees half of it."""
    try:
        write_text_atomically(path, json.dumps(asdict(endpoints)) + "\n")
    except OSError as exc:
        raise SurgeError(f"--endpoints-file {path}: cannot write it ({exc.strerror})") from None


def read_endpoints(path: Path) -> Endpoints | None:
    """What `write_endpoints` wrote, or None while the server is not listening yet."""
    if not path.exists():
        return None
    return Endpoints(**json.loads(path.read_text()))


def _exported(engine: InferenceEngine) -> CollectorRegistry:
    """What the metrics port exports: this engine's registry, or with several front ends
    (the multiprocess directory set) the sums over all of them."""
    if not os.environ.get(METRICS_DIR_ENV):
        return engine.metrics.registry
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class SurgeServer:
    """Starts the engine and the three front ends; `drain()` stops them in order."""

    def __init__(self, engine: InferenceEngine, options: ServeOptions) -> None:
        self.engine = engine
        self.options = options
        size_cache(engine, options.response_cache_bytes)
        self.site = Production(options.production, options.api_key)
        self.shared_memory = registry_for(options.shared_memory)
        # Loads and unloads, done by every front end when there are several.
        self.control = (control_for(engine) if self.site.repository_api
                        else RepositoryControl(engine))
        self.app = V2App(engine, max_body_bytes=options.max_body_bytes, keys=self.site.keys,
                         request_log=self.site.request_log,
                         repository_api=self.site.repository_api,
                         shared_memory=self.shared_memory, control=self.control)
        self._http: uvicorn.Server | None = None
        self._http_socket: socket.socket | None = None
        self._grpc: Any = None
        self._grpc_servicer: Any = None
        self._metrics: uvicorn.Server | None = None
        self._metrics_socket: socket.socket | None = None
        self.triton = (TritonSource(engine, options.response_cache_bytes > 0,
                                    shared=bool(os.environ.get(METRICS_DIR_ENV)))
                       if "triton" in options.metrics_names else None)

    async def start(self) -> Endpoints:
        options = self.options
        # The ports first: one another program holds is refused before any model loads.
        sockets = reserve_all(options.host, (options.http_port, options.grpc_port,
                                             options.metrics_port), reuse_port=options.reuse_port)
        self._http_socket, grpc_socket, self._metrics_socket = sockets
        try:
            self.site.before_engine(self.engine, options.models)
            await self.engine.start()
            await self.control.start()  # a restarted front end: the others' loads and unloads
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self._http = await _start_uvicorn(self.app, self._http_socket, options,
                                          self.site.ssl_context)
        servicer = InferenceServicer(self.engine, keys=self.site.keys,
                                     request_log=self.site.request_log,
                                     repository_api=self.site.repository_api,
                                     shared_memory=self.shared_memory, control=self.control)
        self._grpc, self._grpc_servicer, grpc_port = await self._start_grpc(servicer, grpc_socket)
        # On the event loop like HTTP, so that the same connection limits guard it.
        metrics_app = self.site.metrics_app(MetricsApp(
            _exported(self.engine), self.triton, surge="surge" in options.metrics_names))
        if self.triton is not None:
            self.triton.start()
        self._metrics = await _start_uvicorn(metrics_app, self._metrics_socket, options,
                                             self.site.ssl_context)
        self.site.after_start()
        host = _url_host(options.host)
        http_port = self._http_socket.getsockname()[1]
        metrics_port = self._metrics_socket.getsockname()[1]
        scheme = "https" if self.site.ssl_context is not None else "http"
        return Endpoints(f"{scheme}://{host}:{http_port}", f"{host}:{grpc_port}",
                         f"{scheme}://{host}:{metrics_port}/metrics")

    async def _start_grpc(self, servicer: InferenceServicer,
                          reserved: socket.socket) -> tuple[Any, Any, int]:
        """Surge's listener serves the reserved socket; grpc core binds its own port, so it
        gets the reserved one's number (port 0 chosen there) once the socket is closed."""
        options = self.options
        common: dict[str, Any] = {"limits": options.limits, "reuse_port": options.reuse_port,
                                  "max_message_bytes": options.max_body_bytes,
                                  "servicer": servicer}
        if options.grpc_server == "grpcio":
            port = reserved.getsockname()[1]
            reserved.close()
            return await start_grpc_server(self.engine, options.host, port,
                                           credentials=self.site.grpc_credentials(), **common)
        return await start_grpc_h2_server(self.engine, options.host, options.grpc_port,
                                          ssl_context=self.site.grpc_ssl_context, sock=reserved,
                                          **common)

    def reload_files(self) -> None:
        """Read the certificate and the key file again (SIGHUP)."""
        self.site.reload_files()

    async def drain(self) -> None:
        """Refuse new work, finish what was accepted (within the grace period), stop."""
        started = time.monotonic()
        await self.site.stop_watching()
        await self.control.stop()
        self.app.accepting = False
        if self._grpc_servicer is not None:
            self._grpc_servicer.accepting = False
        waits = [self.control.settle(self.options.grace_s)]  # before the listeners cut off
        if self._http is not None:
            waits.append(self._drain_http(self._http))
        if self._grpc is not None:
            waits.append(self._grpc.stop(self.options.grace_s))
        await asyncio.gather(*waits)
        remaining = max(1.0, self.options.grace_s - (time.monotonic() - started))
        if self.triton is not None:  # the listeners' requests answered: their counts written
            await self.triton.stop()  # (before the engine stops, which forgets its models)
        await self.engine.stop(remaining)
        if self._metrics is not None and self._metrics_socket is not None:
            await _shut_down(self._metrics, self._metrics_socket)
        if self.shared_memory is not None:
            self.shared_memory.close()
        self.site.close()

    async def _drain_http(self, http: uvicorn.Server) -> None:
        """Stop taking connections, then give requests already on their way over open
        keep-alive connections HTTP_LINGER_S to arrive and be answered (503 "server is shutting
        down", with `Connection: close`); then uvicorn lets open requests finish and closes the
        idle connections, which would have cut such a request off without an answer."""
        for listener in http.servers:
            await close_listener(listener)
        await asyncio.sleep(HTTP_LINGER_S)
        await _shut_down(http, self._http_socket)


async def _shut_down(server: uvicorn.Server, sock: socket.socket | None) -> None:
    """uvicorn's shutdown; the requests it cancels as the grace ends get a moment to send
    their 503, and a connection still open after that is closed (left open, it outlived the
    event loop, its socket never closed)."""
    for listener in server.servers:
        await close_listener(listener)  # uvicorn's shutdown closes it at once
    await server.shutdown(sockets=[sock] if sock is not None else None)
    if server.server_state.tasks:  # cancelled as the grace ended: their answers go out
        await asyncio.wait(list(server.server_state.tasks), timeout=CUT_OFF_ANSWER_S)
    for connection in list(server.server_state.connections):
        connection.transport.abort()


async def _start_uvicorn(app: Any, sock: socket.socket, options: ServeOptions,
                         ssl_context: Any = None) -> uvicorn.Server:
    """A uvicorn server on `sock` whose connections obey `options.limits` (TLS with a context:
    the one context is shared, so a certificate reload reaches every listener)."""
    limits = options.limits
    config = uvicorn.Config(
        app, http=guarded_protocol(limits), loop="none", lifespan="off", access_log=False,
        log_level="warning", server_header=False, date_header=False, proxy_headers=False,
        # Typed int, but handed to loop.call_later: fractions of a second work.
        timeout_keep_alive=limits.idle_timeout_s,  # type: ignore[arg-type]
        backlog=2048,
        timeout_graceful_shutdown=max(1, round(options.grace_s)),
        ssl_context_factory=(lambda _config, _default: ssl_context) if ssl_context else None,
    )
    # startup()/shutdown() rather than serve(): serve() installs its own signal handlers,
    # and the drain order (front ends first, then the engine) is decided by SurgeServer.
    config.load()
    from surge.server.log_limits import limit_protocol_warnings

    limit_protocol_warnings()  # after uvicorn's logging setup, which leaves filters alone
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await _listen(server, sock, limits.header_timeout_s)
    return server


async def _listen(server: uvicorn.Server, sock: socket.socket, handshake_s: float) -> None:
    """uvicorn's `startup(sockets=[sock])`, with a TLS handshake deadline: uvicorn passes none,
    and asyncio's default (60 s) let a client that connects and never finishes its handshake
    hold a descriptor six times as long as the header timeout a plain-text client gets (and
    uncounted by the connection cap, which sees a connection only once its handshake is done)."""
    config = server.config

    def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=server.server_state,
            app_state=server.lifespan.state, _loop=_loop)

    listener = await asyncio.get_running_loop().create_server(
        create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog,
        ssl_handshake_timeout=handshake_s if config.ssl is not None else None)
    server.servers = [listener]
    server.started = True


async def serve_until_signal(
    engine: InferenceEngine, options: ServeOptions, on_started: Callable[[Endpoints], None] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = SurgeServer(engine, options)
    # SIGHUP re-reads the certificate and the key file; it never ends the server (its
    # default action would, with no drain, as `kill -HUP` or a closed terminal sends it).
    loop.add_signal_handler(signal.SIGHUP, server.reload_files)
    try:
        endpoints = await started_unless_stopped(server, stop)
        if endpoints is None:
            log.info("stopping before every model loaded")
            return
        freeze_loaded_heap()
        if on_started is not None:
            on_started(endpoints)
        await stop.wait()
        log.info("draining: finishing accepted requests (grace %.0f s)", options.grace_s)
    finally:
        await server.drain()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def started_unless_stopped(server: SurgeServer, stop: asyncio.Event) -> Endpoints | None:
    """`server.start()`, or None when `stop` is set first: the loads in progress are cancelled
    (each stops what it started), as a signal must not wait for models that take minutes."""
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if starting.done():
        return starting.result()
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    return None


def freeze_loaded_heap() -> None:
    """Take what starting made (modules, models' Python side, configs) out of the garbage
    collector's reach: every full collection walks every tracked object, and in a loaded
    serving process one stopped everything for 0.26-0.41 s in the middle of a load trace
    (benchmarks/surge_load.py records them). What serving makes afterwards is collected as
    before; a server process keeps what it loaded until it exits anyway."""
    gc.collect()
    gc.freeze()


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def check_log_level(level: str) -> None:
    if level not in LOG_LEVELS:
        raise SurgeError(f"log level {level!r}: use one of {', '.join(LOG_LEVELS)}")


def configure_logging(level: str) -> None:
    """Log records at `level` and above to stderr, one line each (the server's own log)."""
    check_log_level(level)
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=[_StderrHandler()],
                        force=True)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to the `sys.stderr` of the moment, not of its creation: a caller that
    swaps stderr (a test's capture, an embedding application) and closes the old one must not
    leave the log writing to a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def serve(
    repository: Path | str,
    options: ServeOptions | None = None,
    on_started: Callable[[Endpoints], None] | None = None,
) -> None:
    """Serve a model repository until SIGTERM/SIGINT (the `surge serve` command)."""
    import uvloop

    from surge.engine import Engine

    options = options or ServeOptions()
    if options.log_level is not None:
        configure_logging(options.log_level)
    if options.frontends > 1:
        from surge.server.frontends import serve_frontends

        serve_frontends(repository, options, on_started)
        return
    models = list(options.models) if options.models else None
    repo = Repository(repository)
    if options.ray_address is None:
        engine = Engine(repo, models=models, residency=options.residency)
        uvloop.run(serve_until_signal(engine, options, on_started))
        return
    from surge.cluster import ClusterSite, connect, disconnect

    connect(options.ray_address)  # before the loop: joining blocks
    try:
        site = ClusterSite(str(repo.root.resolve()))
        engine = Engine(repo, models=models, cluster_pools=site, residency=options.residency)
        site.metrics.register(engine.metrics.registry)
        uvloop.run(serve_until_signal(engine, options, on_started))
    finally:
        disconnect()

"""`surge serve`: serve a model repository over V2 HTTP, gRPC and Prometheus metrics."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from surge.commands import console
from surge.errors import SurgeError
from surge.server.frontends import frontend_count

if TYPE_CHECKING:
    from collections.abc import Callable

    from surge.engine.ondemand import ResidencyOptions
    from surge.repository import Repository
    from surge.server.limits import ConnectionLimits
    from surge.server.process import Endpoints, ServeOptions
    from surge.server.production import ProductionOptions


def _models(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise SurgeError(f"--models {value!r} names no model")
    return names


def _production(tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
                api_keys_file: Path | None, metrics_auth: bool, access_log: str | None,
                access_log_sample: float, tracing: str | None, model_control: str | None,
                poll_interval: float | None) -> ProductionOptions:
    """The production options of `surge serve`, checked together."""
    from surge.server.access_log import AccessLogConfig
    from surge.server.production import DEFAULT_POLL_INTERVAL_S, ProductionOptions
    from surge.server.tls import TlsConfig

    if access_log is not None and not access_log.strip():
        raise SurgeError("--access-log '': give a file, or - for standard output")
    if (tls_cert is None) != (tls_key is None):
        raise SurgeError("--tls-cert and --tls-key go together: give both or neither")
    if tls_ca is not None and tls_cert is None:
        raise SurgeError("--tls-ca (client certificates) needs --tls-cert and --tls-key")
    mode = model_control or ("poll" if poll_interval is not None else "explicit")
    if mode not in ("explicit", "poll"):
        raise SurgeError(f"--model-control {mode!r}: use explicit or poll")
    if poll_interval is not None and mode != "poll":
        raise SurgeError("--poll-interval needs --model-control poll")
    # None when not chosen: explicit, the default, in which an empty repository is refused
    chosen = model_control or ("poll" if poll_interval is not None else None)
    return ProductionOptions(
        tls=TlsConfig(tls_cert, tls_key, tls_ca) if tls_cert and tls_key else None,
        keys_file=_checked_keys_file(api_keys_file),
        metrics_auth=metrics_auth,
        access_log=AccessLogConfig(access_log, access_log_sample) if access_log else None,
        tracing=_tracing(tracing), model_control=chosen,  # type: ignore[arg-type]
        poll_interval_s=poll_interval or DEFAULT_POLL_INTERVAL_S,
    )


def _checked_keys_file(path: Path | None) -> Path | None:
    """The key file, read once here so that a mistake stops `surge serve` before the models
    load; the server reads it again as it starts and whenever it changes."""
    from surge.server.keys import read_key_file

    if path is not None:
        read_key_file(path)
    return path


def _residency(load: str, budget: str | None, group_budgets: list[str] | None
               ) -> ResidencyOptions:
    """`--load`, `--memory-budget` and `--group-memory-budget GROUP=SIZE`, checked."""
    from surge.engine.ondemand import ResidencyOptions
    from surge.engine.residency import MemoryBudget, parse_bytes

    if load not in ("eager", "on-demand"):
        raise SurgeError(f"--load {load!r}: use eager or on-demand")
    groups: dict[str, int] = {}
    for item in group_budgets or ():
        group, sep, size = item.partition("=")
        if not sep or not group.strip():
            raise SurgeError(f"--group-memory-budget {item!r}: expected GROUP=SIZE, e.g. "
                             "shared=800MB")
        groups[group.strip()] = parse_bytes(size)
    machine = parse_bytes(budget) if budget is not None else None
    return ResidencyOptions(load, MemoryBudget(machine, groups))  # type: ignore[arg-type]


def _tracing(exporter: str | None) -> str | None:
    """`--tracing`, checked here; each front end makes its own provider from the name (a
    provider holds locks and threads: it cannot be handed to front-end processes)."""
    if exporter is None:
        return None
    from surge.server.tracing import check_exporter

    check_exporter(exporter)
    return exporter


# The production options (docs/production.md), named once here to keep serve() short.
TlsCert = Annotated[Path | None, typer.Option(help="PEM certificate chain: HTTPS and gRPC over "
                                              "TLS on every port.")]
TlsKey = Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")]
TlsCa = Annotated[Path | None, typer.Option(help="PEM CA bundle: require client certificates it "
                                            "signed (mutual TLS).")]
KeysFile = Annotated[Path | None, typer.Option(help="Keys with scopes, one 'KEY read|infer|admin' "
                                               "per line.", envvar="SURGE_API_KEYS_FILE")]
MetricsAuth = Annotated[bool, typer.Option(help="With keys, the metrics port asks for one "
                                           "(scope read).")]
AccessLogPath = Annotated[str | None, typer.Option(help="JSON-lines access log: a file, or - for "
                                                   "standard output.")]
AccessLogSample = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of successful "
                                                "requests logged (failures always are).")]
Tracing = Annotated[str | None, typer.Option(help="OpenTelemetry spans to 'otlp' "
                                             "(OTEL_EXPORTER_OTLP_*) or 'console'.")]
ModelControlMode = Annotated[str | None, typer.Option(help="explicit (load/unload API) or poll "
                                                      "(follow the repository; API refused).")]
PollInterval = Annotated[float | None, typer.Option(min=0.05, help="Seconds between repository "
                                                    "polls (implies --model-control poll; "
                                                    "default 5).")]

RayAddress = Annotated[str | None, typer.Option(
    "--ray", help="Join this Ray cluster (host:port of its head, or 'auto') as a driver: "
    "models with placement cluster|auto run as actors on its compute nodes. The cluster's "
    "token comes from RAY_AUTH_TOKEN.", envvar="SURGE_RAY_ADDRESS")]
ReusePort = Annotated[bool, typer.Option(
    help="Share the ports with other front ends on this machine (SO_REUSEPORT).")]

# Load on demand and the memory budget (docs/many-models.md).
LoadMode = Annotated[str, typer.Option(help="eager: load every model at start; on-demand: list "
                                       "them, load each on its first request (a model's "
                                       "config.yaml `load:` wins).")]
MemoryBudgetSize = Annotated[str | None, typer.Option(
    help="Resident memory the loaded models may use, e.g. 1.5GB: the least recently used "
    "unpinned models are unloaded to fit.")]
GroupBudgets = Annotated[list[str] | None, typer.Option(
    help="GROUP=SIZE: the memory budget of one worker group (repeatable).")]
ResponseCacheBytes = Annotated[str, typer.Option(
    metavar="SIZE", help="Triton's response cache, e.g. 64MB: models whose config.yaml sets "
    "response_cache answer identical requests from it (0: no cache; one per front end).")]
MetricsNames = Annotated[str, typer.Option(
    metavar="surge,triton", help="Metric names the metrics port exports: Surge's surge_*, "
    "Triton's nv_inference_* and nv_cache_* (from the model statistics), or both.")]

# A SurgeError from the parser reaches the CLI's one-line error (a ValueError would become
# click's usage message).
FrontEnds = Annotated[int, typer.Option(parser=frontend_count, metavar="N|auto", help="Front-end "
                                        "processes sharing the ports, each scheduling its own "
                                        "share of the instances ('auto': one per core).")]
GrpcServer = Annotated[str, typer.Option(metavar="surge|grpcio", help="The gRPC listener: "
                                         "Surge's HTTP/2 on the event loop, or grpc core's "
                                         "server (grpc.aio).")]
SharedMemory = Annotated[str, typer.Option(metavar="system|none", help="Triton's system "
                                           "shared-memory extension: clients register regions "
                                           "and name them instead of sending tensor bytes.")]
LogLevel = Annotated[str, typer.Option(metavar="debug|info|warning|error",
                                       help="The server's log on stderr: this level and above.")]
HostAddress = Annotated[str, typer.Option(help="Address to bind (loopback by default).")]
MaxBodyMb = Annotated[float, typer.Option(min=0.001, help="Largest request body (MiB).")]
IdleTimeout = Annotated[float, typer.Option(min=0.001, help="Seconds a connection with no "
                                            "request in progress stays open.")]
HeaderTimeout = Annotated[float, typer.Option(min=0.001, help="Seconds a request's headers "
                                              "(gRPC: the handshake; with TLS, the TLS "
                                              "handshake too) may take.")]
BodyTimeout = Annotated[float, typer.Option(min=0.001, help="Longest pause (s) while a request "
                                            "body arrives.")]
MaxConnections = Annotated[int | None, typer.Option(min=1, help="Open connections per port "
                           "(default: a quarter of the open-file limit, at most 4096).")]
EndpointsFile = Annotated[Path | None, typer.Option(
    help="Once listening, write the endpoints as JSON here ({http, grpc, metrics}): the ports "
    "a script asked as 0 and the system chose.")]

HttpPort = Annotated[int, typer.Option(min=0, max=65535, help="V2 HTTP port.")]
GrpcPort = Annotated[int, typer.Option(min=0, max=65535, help="V2 gRPC port.")]
MetricsPort = Annotated[int, typer.Option(min=0, max=65535, help="Prometheus metrics port.")]
ApiKey = Annotated[str | None, typer.Option(
    help="Require 'Authorization: Bearer KEY' on all but health endpoints.",
    envvar="SURGE_API_KEY")]
ModelNames = Annotated[str | None, typer.Option(help="Serve only these models (a,b).")]
Grace = Annotated[float, typer.Option(min=0.0, help="Seconds SIGTERM waits for accepted "
                                                    "requests.")]


def serve(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    http_port: HttpPort = 8000,
    grpc_port: GrpcPort = 8001,
    metrics_port: MetricsPort = 8002,
    host: HostAddress = "127.0.0.1",
    api_key: ApiKey = None,
    models: ModelNames = None,
    grace: Grace = 30.0,
    max_body_mb: MaxBodyMb = 64.0,
    idle_timeout: IdleTimeout = 75.0,
    header_timeout: HeaderTimeout = 10.0,
    body_timeout: BodyTimeout = 60.0,
    max_connections: MaxConnections = None,
    ray: RayAddress = None,
    reuse_port: ReusePort = False,
    frontends: FrontEnds = 1,
    grpc_server: GrpcServer = "surge",
    shared_memory: SharedMemory = "system",
    load: LoadMode = "eager",
    memory_budget: MemoryBudgetSize = None,
    group_memory_budget: GroupBudgets = None,
    response_cache_bytes: ResponseCacheBytes = "0",
    metrics_names: MetricsNames = "surge,triton",
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    api_keys_file: KeysFile = None,
    metrics_auth: MetricsAuth = True,
    access_log: AccessLogPath = None,
    access_log_sample: AccessLogSample = 1.0,
    tracing: Tracing = None,
    model_control: ModelControlMode = None,
    poll_interval: PollInterval = None,
    log_level: LogLevel = "info",
    endpoints_file: EndpointsFile = None,
) -> None:
    """Serve models until SIGTERM/SIGINT, then drain accepted requests and exit 0."""
    from surge.api import serve as run_server
    from surge.engine.triton_metrics import metric_names
    from surge.server.process import ServeOptions

    options = ServeOptions(
        host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        api_key=api_key, models=_models(models), grace_s=grace, ray_address=ray,
        max_body_bytes=_body_bytes(max_body_mb), residency=_residency(
            load, memory_budget, group_memory_budget),
        limits=_limits(idle_timeout, header_timeout, body_timeout, max_connections),
        reuse_port=reuse_port, frontends=frontends, log_level=log_level,
        grpc_server=grpc_server, shared_memory=shared_memory,
        response_cache_bytes=_cache_bytes(response_cache_bytes),
        metrics_names=metric_names(metrics_names),
        production=_production(tls_cert, tls_key, tls_ca, api_keys_file, metrics_auth, access_log,
                               access_log_sample, tracing, model_control, poll_interval),
    )
    started = _on_started(repo, options, endpoints_file)
    _check_repository(repo, group_memory_budget or [], options)
    run_server(repo, options, started)
    console.print("surge: drained and stopped")


def _cache_bytes(size: str) -> int:
    """`--response-cache-bytes`: 0 (none), or a size as the memory budgets take it, of at
    least a byte (0.1 would be a cache of none) and at most the machine's memory."""
    from surge.engine.residency import parse_bytes
    from surge.engine.response_cache import check_cache_size

    if size.strip() == "0":
        return 0
    try:
        capacity = parse_bytes(size)
    except SurgeError:
        capacity = 0
    if capacity < 1:
        raise SurgeError(f"--response-cache-bytes {size!r}: give 0 (no cache) or a size such "
                         "as 64MB, 1GiB or 1048576 (bytes)")
    return check_cache_size(capacity, size)


def _body_bytes(max_body_mb: float) -> int:
    if not math.isfinite(max_body_mb):
        raise SurgeError(f"--max-body-mb {max_body_mb}: give a finite size in MiB")
    return int(max_body_mb * 1024 * 1024)


def _check_repository(repo: Path, group_budgets: list[str], options: ServeOptions) -> None:
    """Refuse, before any port is bound, a repository with no model (as the Python API does),
    and a budget for a worker group no model runs in (a misspelt group would limit nothing).
    Neither when a model-control mode is chosen: models may then be added while serving."""
    from surge.repository import Repository
    from surge.server.serve_checks import check_has_models

    names = check_has_models(repo, options)
    if names is None:
        return
    groups = _worker_groups(Repository(repo), names)
    for item in group_budgets:
        group = item.partition("=")[0].strip()
        if group not in groups:
            known = (f"groups: {', '.join(sorted(groups))}" if groups else "none runs in a "
                     "worker group: config.yaml's `worker: shared` or `worker: {group: NAME}` "
                     "puts it in one")
            raise SurgeError(f"--group-memory-budget {item}: no model of the repository runs "
                             f"in worker group {group!r} ({known})")


def _worker_groups(repository: Repository, names: list[str]) -> set[str]:
    """The worker groups the models `names` run in (a config that cannot be read is reported
    by its model's load)."""
    from surge.engine.ondemand import group_of

    groups: set[str] = set()
    for name in names:
        try:
            group = group_of(repository.config(name))
        except SurgeError:
            continue
        if group is not None:
            groups.add(group)
    return groups


def _limits(idle: float, header: float, body: float, connections: int | None) -> ConnectionLimits:
    from surge.server.limits import ConnectionLimits

    limits = ConnectionLimits(idle_timeout_s=idle, header_timeout_s=header, body_timeout_s=body)
    return limits if connections is None else replace(limits, max_connections=connections)


def _on_started(repo: Path, options: ServeOptions,
                endpoints_file: Path | None) -> Callable[[Endpoints], None]:
    """What the server does once listening: announce, and write the endpoints file (whose
    folder is checked now, before any model loads)."""
    if endpoints_file is not None and not endpoints_file.parent.is_dir():
        raise SurgeError(f"--endpoints-file {endpoints_file}: no directory "
                         f"{endpoints_file.parent}")
    if endpoints_file is not None and endpoints_file.is_dir():
        raise SurgeError(f"--endpoints-file {endpoints_file}: is a directory, not a file name")

    from surge.server.process import write_endpoints

    def started(endpoints: Endpoints) -> None:
        _announce(repo, endpoints, options)
        if endpoints_file is not None:
            write_endpoints(endpoints_file, endpoints)

    return started


def _announce(repo: Path, endpoints: Endpoints, options: ServeOptions) -> None:
    console.print(f"[bold green]surge serving[/bold green] {repo}")
    console.print(f"  HTTP    {endpoints.http}/v2")
    console.print(f"  gRPC    {endpoints.grpc}")
    console.print(f"  metrics {endpoints.metrics}", highlight=False)
    if options.api_key or options.production.keys:
        console.print("  API key required (Authorization: Bearer ...)")
    if options.production.tls is not None:
        console.print(f"  TLS     {options.production.tls.cert}", highlight=False)
    if options.ray_address:
        console.print(f"  Ray     {options.ray_address}")
    if options.frontends > 1:
        console.print(f"  front ends {options.frontends} (SO_REUSEPORT)")

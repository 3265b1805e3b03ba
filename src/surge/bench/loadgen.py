"""The load generator: closed loop (fixed concurrency) or open loop (Poisson arrivals)."""

from __future__ import annotations

import asyncio
import itertools
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from surge.bench.checks import MAX_CONCURRENCY as MAX_CONCURRENCY  # where callers look
from surge.bench.checks import MAX_RATE as MAX_RATE
from surge.bench.checks import bench_levels, check_api_key, check_load, check_target
from surge.bench.clients import GrpcTransport, HttpTransport, Transport
from surge.bench.grpc_client import LeanGrpcTransport
from surge.bench.payload import (
    MAX_REQUEST_BYTES,
    InputSpec,
    grpc_request,
    http_body,
    http_request,
    request_bytes,
    sample_inputs,
    specs_from_metadata,
)
from surge.errors import SurgeError

PROTOCOLS = ("http", "http-json", "grpc")


@dataclass(frozen=True)
class BenchRun:
    """One load level: what was sent, what came back, and what the client itself cost."""

    concurrency: int
    rate: float | None  # arrivals per second (open loop); None for a closed loop
    duration_s: float
    requests: int
    ok: int
    throughput: float  # successful responses per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    client_cpu_s: float
    client_cpu_share: float  # client CPU seconds / wall seconds (1.0 = one core)
    # Open loop: requests sent more than SENT_LATE_S after their scheduled time (the client
    # fell behind). Their latency counts from the schedule all the same.
    sent_late: int = 0


@dataclass(frozen=True)
class BenchReport:
    url: str
    model: str
    protocol: str
    batch_size: int
    runs: list[BenchRun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# An open-loop request sent this long after its scheduled time is counted as sent late.
SENT_LATE_S = 0.001
# Requests still unanswered after a run's end are given up after its grace, counted as TIMEOUT
# errors: the run's own length, at least MIN_GRACE_S (a slow answer to a short run) and at most
# GRACE_S (an unanswering server costs a 1 s run 5 s, not 30 s per warm-up and level).
GRACE_S = 30.0
MIN_GRACE_S = 5.0
TIMEOUT = "timeout"


class NoAnswerError(SurgeError):
    """The warm-up sent requests and got no answer to any of them within its grace: the server
    accepts requests and answers none (a hung model or server)."""


def grace_s(duration_s: float) -> float:
    """How long a run of `duration_s` waits for its last answers."""
    return min(GRACE_S, max(MIN_GRACE_S, duration_s))


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    sent_late: int = 0

    def record(self, outcome: str, seconds: float) -> None:
        self.sent += 1
        if outcome == "ok":
            self.latencies.append(seconds)
        else:
            self.errors[outcome] += 1


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentiles(latencies: list[float]) -> tuple[float, float, float, float]:
    if not latencies:
        nan = float("nan")
        return nan, nan, nan, nan
    ms = np.asarray(latencies) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return float(p50), float(p90), float(p99), float(ms.max())


async def _timed(transport: Transport, payload: bytes, tally: _Tally,
                 scheduled: float | None = None) -> None:
    """Send one request; its latency counts from `scheduled` when given (open loop), so that
    a client that falls behind its schedule does not hide the wait (coordinated omission:
    a request sent late because the server was slow would be timed from the late send)."""
    start = time.perf_counter()
    if scheduled is not None:
        tally.sent_late += start - scheduled > SENT_LATE_S
        start = min(start, scheduled)
    try:
        outcome = await transport.send(payload)
    except asyncio.CancelledError:  # unanswered when the run's grace period ran out
        tally.record(TIMEOUT, time.perf_counter() - start)
        raise
    tally.record(outcome, time.perf_counter() - start)


async def _finish(tasks: set[asyncio.Task[None]], until: float, grace: float) -> None:
    """Wait for `tasks` until `grace` past the run's end, then cancel what is left (each an
    unanswered request, counted as a TIMEOUT error): a server that accepts requests and never
    answers does not hold the run forever."""
    if tasks:
        await asyncio.wait(tasks, timeout=max(0.0, until + grace - time.perf_counter()))
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _closed_loop(transport: Transport, payloads: list[bytes], concurrency: int,
                       until: float, tally: _Tally, grace: float) -> None:
    async def client(offset: int) -> None:
        cycle = itertools.cycle(payloads[offset % len(payloads):] + payloads)
        while time.perf_counter() < until:
            await _timed(transport, next(cycle), tally)

    await _finish({asyncio.ensure_future(client(i)) for i in range(concurrency)}, until, grace)


async def _open_loop(transport: Transport, payloads: list[bytes], rate: float, poisson: bool,
                     until: float, tally: _Tally, grace: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pending: set[asyncio.Task[None]] = set()
    cycle = itertools.cycle(payloads)
    next_at = time.perf_counter()
    while next_at < until:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif time.perf_counter() >= until:
            break  # behind the schedule at the end: the run still ends at its duration
        else:
            await asyncio.sleep(0)  # behind: let the requests already sent make progress
        task = asyncio.ensure_future(_timed(transport, next(cycle), tally, next_at))
        pending.add(task)
        task.add_done_callback(pending.discard)
        next_at += rng.exponential(1.0 / rate) if poisson else 1.0 / rate
    # the run lasts its duration even when the next arrival falls after it: the throughput
    # divides by the time the schedule covered, not by the time to its last arrival
    await asyncio.sleep(max(0.0, until - time.perf_counter()))
    await _finish(set(pending), until, grace)


async def _progress_loop(tally: _Tally, started: float, duration: float,
                         report: Callable[[int, int, float], None]) -> None:
    while True:
        await asyncio.sleep(0.5)
        report(tally.sent, sum(tally.errors.values()), min(1.0, (time.perf_counter() - started)
                                                          / duration))


async def _warm_up(transport: Transport, payloads: list[bytes], clients: int, seconds: float,
                   grace: float) -> None:
    """Unmeasured load; a server that answered none of it (every request given up) would only
    time out the measured run too, so the bench stops here instead."""
    tally = _Tally()
    await _closed_loop(transport, payloads, clients, time.perf_counter() + seconds, tally, grace)
    if tally.sent and tally.errors[TIMEOUT] == tally.sent:
        raise NoAnswerError(f"no answer to any of the {tally.sent} warm-up request(s) within "
                            f"{seconds + grace:g} s ({seconds:g} s of warm-up + {grace:g} s)")


async def run_level(
    transport: Transport, payloads: list[bytes], *, concurrency: int, duration_s: float,
    rate: float | None = None, poisson: bool = True, warmup_s: float = 1.0,
    progress: Callable[[int, int, float], None] | None = None,
) -> BenchRun:
    """Drive one load level and measure it (after `warmup_s` of unmeasured load); NoAnswerError
    when the warm-up got no answer at all."""
    grace = grace_s(duration_s)
    if warmup_s > 0:
        await _warm_up(transport, payloads, min(concurrency, 64), warmup_s, grace)
    tally = _Tally()
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    until = wall0 + duration_s
    ticker = asyncio.ensure_future(_progress_loop(tally, wall0, duration_s, progress)) \
        if progress else None
    try:
        if rate is None:
            await _closed_loop(transport, payloads, concurrency, until, tally, grace)
        else:
            await _open_loop(transport, payloads, rate, poisson, until, tally, grace)
    finally:
        if ticker is not None:
            ticker.cancel()
    wall = time.perf_counter() - wall0
    cpu = _cpu_seconds() - cpu0
    p50, p90, p99, worst = _percentiles(tally.latencies)
    return BenchRun(
        concurrency=concurrency, rate=rate, duration_s=wall, requests=tally.sent,
        ok=len(tally.latencies), throughput=len(tally.latencies) / wall, p50_ms=p50,
        p90_ms=p90, p99_ms=p99, max_ms=worst, errors=dict(tally.errors), client_cpu_s=cpu,
        client_cpu_share=cpu / wall, sent_late=tally.sent_late,
    )


# -- setting up a target ----------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where to send and what: a transport factory plus prepared payloads."""

    protocol: str
    payloads: list[bytes]
    make_transport: Callable[[int], Transport]


def _split_url(url: str, default_port: int) -> tuple[str, int]:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise SurgeError(f"URL {url!r} is not a valid URL ({exc})") from None
    if not host:
        raise SurgeError(f"cannot read a host from URL {url!r}")
    return host, port or default_port


def check_model_name(model: str) -> None:
    """Refuse a name no request line can carry (not UTF-8, blank, `/`, `?`, `#`, spaces)."""
    try:
        model.encode("utf-8")
    except UnicodeEncodeError:
        raise SurgeError(f"--model {model!r} is not valid UTF-8") from None
    if not model or any(c in "/?#" or c.isspace() or not c.isprintable() for c in model):
        raise SurgeError(f"--model {model!r} is not a model name")


def check_url(url: str, protocol: str) -> None:
    """Refuse a server URL that cannot be parsed, or (HTTP) has no scheme, before anything is
    sent."""
    if protocol == "grpc":
        _grpc_target(url)
        return
    _split_url(url, 8000)
    try:
        scheme = httpx.URL(url).scheme
    except (httpx.InvalidURL, ValueError) as exc:
        raise SurgeError(f"URL {url!r} is not a valid URL ({exc})") from None
    if scheme not in ("http", "https"):
        raise SurgeError(f"URL {url!r}: begin it with http:// or https://, e.g. "
                         f"http://{url.partition('://')[2] or url}")


def _grpc_target(url: str) -> tuple[str, int]:
    """`grpc://host:port`, `host:port` or `http://host:port` -> (host, port)."""
    return _split_url(url.replace("grpc://", "http://", 1), 8001)


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def fetch_metadata(url: str, model: str, api_key: str | None = None,
                   protocol: str = "http") -> dict[str, Any]:
    """Model metadata over HTTP (for the http protocols) or gRPC."""
    if protocol == "grpc":
        return _grpc_metadata(url, model, api_key)
    try:
        response = httpx.get(f"{url.rstrip('/')}/v2/models/{model}", timeout=10.0,
                             headers=_auth_headers(api_key))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise SurgeError(f"cannot reach {url} ({exc})") from None
    if response.status_code != 200:
        raise SurgeError(f"{url}: model {model!r} metadata -> HTTP {response.status_code}: "
                         f"{response.text[:200]}")
    return dict(response.json())


def _grpc_call(url: str, api_key: str | None, method: str, request: Any) -> Any:
    """One unary call of the inference service (10 s); grpc.RpcError when it fails."""
    import grpc

    from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

    host, port = _grpc_target(url)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        return getattr(stub, method)(request, timeout=10.0, metadata=metadata)


def _grpc_metadata(url: str, model: str, api_key: str | None) -> dict[str, Any]:
    import grpc
    from google.protobuf import json_format

    from surge.protocol.grpc_gen import grpc_service_pb2 as pb

    try:
        reply = _grpc_call(url, api_key, "ModelMetadata", pb.ModelMetadataRequest(name=model))
    except grpc.RpcError as exc:
        raise SurgeError(f"{url}: model {model!r} metadata -> {exc.code().name}") from None
    return dict(json_format.MessageToDict(reply, preserving_proto_field_name=True))


def fetch_max_batch(url: str, model: str, api_key: str | None = None,
                    protocol: str = "http") -> int | None:
    """The model configuration's max_batch_size (0: no batch dimension); None when the server
    does not say."""
    try:
        if protocol == "grpc":
            return _grpc_max_batch(url, model, api_key)
        response = httpx.get(f"{url.rstrip('/')}/v2/models/{model}/config", timeout=10.0,
                             headers=_auth_headers(api_key))
        if response.status_code != 200:
            return None
        return int(response.json().get("max_batch_size", 0))
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, TypeError, AttributeError):
        return None


def _grpc_max_batch(url: str, model: str, api_key: str | None) -> int | None:
    import grpc

    from surge.protocol.grpc_gen import grpc_service_pb2 as pb

    try:
        reply = _grpc_call(url, api_key, "ModelConfig", pb.ModelConfigRequest(name=model))
    except grpc.RpcError:
        return None
    return int(reply.config.max_batch_size)


def check_batch_size(url: str, model: str, protocol: str, batch_size: int,
                     specs: list[InputSpec], batched: bool, api_key: str | None) -> None:
    """Refuse a batch the model cannot take, or one too large to build, before building it."""
    if batch_size > 1:
        max_batch = fetch_max_batch(url, model, api_key, protocol)
        # Without a batch dimension each request carries one row, not the batch asked for.
        if max_batch == 0 or not batched:
            raise SurgeError(f"--batch-size {batch_size}: model {model!r} has no batch dimension")
        if max_batch and batch_size > max_batch:
            raise SurgeError(f"--batch-size {batch_size} is larger than model {model!r}'s "
                             f"max batch size {max_batch}")
    size = request_bytes(specs, batch_size, batched)
    if size > MAX_REQUEST_BYTES:
        raise SurgeError(f"--batch-size {batch_size}: a request would carry {size >> 20} MiB "
                         f"of tensors, more than {MAX_REQUEST_BYTES >> 20} MiB")


def _grpc_connections(clients: int) -> int:
    """Connections for `clients` concurrent calls: one per 16, at most 8."""
    return max(1, min(8, clients // 16))


def prepare_target(url: str, model: str, protocol: str, *, batch_size: int = 1,
                   api_key: str | None = None, variants: int = 16,
                   dataset: str | None = None, grpc_client: str = "surge",
                   files: Sequence[bytes] = (), strict_dataset: bool = False) -> Target:
    """Fetch the model's metadata and serialize the request payloads once (`files` as the rows
    of BYTES inputs, rows of `dataset` where it has the model's inputs, random values
    otherwise). gRPC goes over the load generator's own HTTP/2 client, or grpc.aio's with
    `grpc_client="grpcio"`; with `strict_dataset`, a `dataset` that cannot fill every input
    is an error."""
    if protocol not in PROTOCOLS:
        raise SurgeError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    check_target(url, model)
    check_api_key(api_key)
    check_url(url, protocol)
    check_model_name(model)
    metadata = fetch_metadata(url, model, api_key, protocol)
    specs: list[InputSpec] = specs_from_metadata(metadata)
    batched = all(s.shape and s.shape[0] == -1 for s in specs)
    if files and not any(spec.datatype == "BYTES" for spec in specs):
        raise SurgeError(f"--files: model {model!r} has no BYTES input to send them in")
    check_batch_size(url, model, protocol, batch_size, specs, batched, api_key)
    variants = max(variants, -(-len(files) // batch_size))  # every file sent
    sets = sample_inputs(specs, batch_size=batch_size, batched=batched, variants=variants,
                         dataset=dataset, files=files, strict_dataset=strict_dataset)
    if protocol == "grpc":
        host, port = _grpc_target(url)
        grpc_meta = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        payloads = [grpc_request(model, s, specs) for s in sets]
        if grpc_client == "grpcio":
            return Target(protocol, payloads, lambda c: GrpcTransport(
                f"{host}:{port}", _grpc_connections(c), grpc_meta))
        return Target(protocol, payloads, lambda c: LeanGrpcTransport(
            host, port, _grpc_connections(c), grpc_meta))
    host, port = _split_url(url, 8000)
    path = f"/v2/models/{model}/infer"
    payloads = [http_request(f"{host}:{port}", path, *http_body(s, specs, protocol == "http"),
                             headers=_auth_headers(api_key)) for s in sets]
    return Target(protocol, payloads, lambda _c: HttpTransport(host, port))


def _level_progress(progress: Callable[[int, float, int, int, float], None], level: int,
                    duration_s: float) -> Callable[[int, int, float], None]:
    def hook(sent: int, errors: int, done: float) -> None:
        progress(level, done, sent, errors, duration_s)

    return hook


async def bench_async(
    url: str, model: str, concurrency: Sequence[int], duration_s: float, protocol: str = "http",
    *, rate: float | None = None, poisson: bool = True, batch_size: int = 1,
    api_key: str | None = None, warmup_s: float = 1.0,
    progress: Callable[[int, float, int, int, float], None] | None = None,
    dataset: str | None = None, grpc_client: str = "surge", files: Sequence[bytes] = (),
    strict_dataset: bool = False, on_run: Callable[[BenchRun], None] | None = None,
) -> BenchReport:
    """Run every load level in turn against a live server (`on_run` gets each level's run as
    it ends: what an interrupted bench has measured)."""
    levels = bench_levels(concurrency)
    check_load(duration_s, rate, batch_size, warmup_s)
    target = await asyncio.to_thread(prepare_target, url, model, protocol,
                                     batch_size=batch_size, api_key=api_key, dataset=dataset,
                                     grpc_client=grpc_client, files=files,
                                     strict_dataset=strict_dataset)
    report = BenchReport(url, model, protocol, batch_size)
    for level in levels:
        transport = target.make_transport(level)
        hook = None if progress is None else _level_progress(progress, level, duration_s)
        try:
            run = await run_level(transport, target.payloads, concurrency=level,
                                  duration_s=duration_s, rate=rate, poisson=poisson,
                                  warmup_s=warmup_s, progress=hook)
        except NoAnswerError as exc:
            raise NoAnswerError(f"{url}: model {model!r} accepts requests but answers none: "
                                f"{exc}; is the server or the model hung? (a model still "
                                "loading on demand answers later: bench it again)") from None
        finally:
            await transport.close()
        report.runs.append(run)
        if on_run is not None:
            on_run(run)
    return report


def run_bench(
    url: str, model: str, concurrency: int | Sequence[int] = (1, 16, 64, 256),
    duration_s: float = 20.0, protocol: str = "http", rate: float | None = None, **kwargs: Any,
) -> BenchReport:
    """Benchmark a running server; the Python face of `surge bench`. SIGTERM meanwhile (where
    the caller handles it) cancels the run before the caller's handler runs."""
    from surge.bench.termination import run_until_terminated

    levels = bench_levels(concurrency)
    return run_until_terminated(bench_async(url, model, levels, duration_s, protocol, rate=rate,
                                            **kwargs))

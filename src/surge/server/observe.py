"""Request ids, the access log and tracing as the front ends see them.

Each inference request gets an id: the client's `x-request-id` (HTTP header or gRPC metadata)
when it is a short token, else one made here; the answer carries it back. The requests of one
gRPC stream share the stream's id (its metadata is read once) and are told apart by their own
`id` field, which their answers echo, as Triton does. When an access log
or a tracer is configured, the front end also keeps a `RequestRecord` (a few timestamps) and
hands it to `RequestLog.finish` once the answer is sent.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from surge.engine.timing import RequestTiming
from surge.server.access_log import AccessLog

REQUEST_ID_HEADER = "x-request-id"
# Ids are echoed into headers and logs: short tokens only, no spaces or control characters.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
# A streamed request's own `id`, or a model name that is not one (refused), is any string the
# client chose: what the log and the span keep of it.
_MAX_CLIENT_TEXT = 128


class RequestIds:
    """The client's request id when it is acceptable, else `<process tag>-<counter>`."""

    def __init__(self) -> None:
        self._tag = os.urandom(4).hex()
        self._count = itertools.count(1)

    def accept(self, value: bytes | None) -> str:
        if value is not None and _REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
        return f"{self._tag}-{next(self._count)}"


@dataclass
class RequestRecord:
    """Timestamps (perf_counter seconds) and facts of one request, for the log and the spans."""

    protocol: str  # http or grpc
    request_id: str
    client: str
    model: str
    traceparent: str | None
    tracestate: str | None = None  # the caller's W3C vendor state, kept on its span
    item_id: str | None = None  # a streamed request's own `id` field (None: not streamed)
    started: float = field(default_factory=time.perf_counter)
    wall_ns: int = field(default_factory=time.time_ns)  # wall clock at `started`
    clock_offset: float = 0.0  # perf_counter minus the engine's clock, at `started`
    decoded: float = 0.0
    computed: float = 0.0
    finished: float = 0.0
    version: int | None = None
    variant: str | None = None
    status: int | str = 200
    failed: bool = False
    timing: RequestTiming = field(default_factory=RequestTiming)

    def wall(self, at: float) -> int:
        """Wall-clock nanoseconds of a perf_counter time."""
        return self.wall_ns + int((at - self.started) * 1e9)

    def on_engine_clock(self, at: float) -> float:
        return at + self.clock_offset

    def phases(self) -> list[tuple[str, float, float, dict[str, Any]]]:
        """(name, start, end, attributes) of each phase the request went through, in order."""
        phases: list[tuple[str, float, float, dict[str, Any]]] = []
        if self.decoded:
            phases.append(("decode", self.started, self.decoded, {}))
        steps = self.timing.steps or [("", self.timing)]
        for step, timing in steps:
            phases += self._engine_phases(timing, {"surge.step": step} if step else {})
        if self.computed and self.finished:
            phases.append(("encode", self.computed, self.finished, {}))
        return phases

    def _engine_phases(self, timing: RequestTiming, attributes: dict[str, Any]
                       ) -> list[tuple[str, float, float, dict[str, Any]]]:
        """Queue, batch and compute of one pass through a model's queue (a pipeline's request
        makes one a model step, each named by `surge.step`)."""
        if not timing.dispatched:
            return []
        queued, dispatched = (self.on_engine_clock(timing.queued),
                              self.on_engine_clock(timing.dispatched))
        phases = [("queue", queued, dispatched, attributes)]
        if timing.done:
            done = self.on_engine_clock(timing.done)
            phases.append(("batch", dispatched, done,
                           {**attributes, "surge.batch_size": timing.batch_size}))
            phases.append(("compute", max(dispatched, done - timing.compute_s), done, attributes))
        return phases

    def log_line(self) -> dict[str, Any]:
        timing = self.timing
        return {
            "time": datetime.fromtimestamp(self.wall_ns / 1e9, UTC).isoformat(timespec="milliseconds"),
            "request_id": self.request_id, "protocol": self.protocol, "client": self.client,
            "model": self.model, "version": self.version, "variant": self.variant,
            "batch_size": timing.batch_size or None, "queue_ms": _ms(timing.queue_s),
            "compute_ms": _ms(timing.batch_s), "total_ms": _ms(self.finished - self.started),
            "status": self.status,
        } | ({} if self.item_id is None else {"id": self.item_id})


def _clipped(text: str) -> str:
    return text if len(text) <= _MAX_CLIENT_TEXT else text[:_MAX_CLIENT_TEXT] + "..."


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


class RequestLog:
    """The access log and the tracer of one server (either may be absent)."""

    def __init__(self, access_log: AccessLog | None = None, tracer: Any = None) -> None:
        self.access_log = access_log
        self.tracer = tracer  # surge.server.tracing.Tracer

    @property
    def enabled(self) -> bool:
        return self.access_log is not None or self.tracer is not None

    def begin(self, protocol: str, model: str, request_id: str, client: str,
              traceparent: str | None, engine_clock: float, *, tracestate: str | None = None,
              item_id: str | None = None) -> RequestRecord | None:
        """A record for a new request, or None when nothing would read it."""
        if not self.enabled:
            return None
        record = RequestRecord(protocol, request_id, client, _clipped(model), traceparent,
                               tracestate, None if item_id is None else _clipped(item_id))
        record.clock_offset = record.started - engine_clock
        return record

    def finish(self, record: RequestRecord | None, status: int | str, failed: bool) -> None:
        if record is None:
            return
        record.finished = time.perf_counter()
        record.status, record.failed = status, failed
        if self.access_log is not None and self.access_log.wanted(failed):
            self.access_log.write(record.log_line())
        if self.tracer is not None:
            self.tracer.record(record)

    def refused(self, protocol: str, client: str, request: str, status: int | str) -> None:
        """An access-log line for a request refused for its key (401/403, UNAUTHENTICATED /
        PERMISSION_DENIED) before any work: who tried what, on every route, for an audit."""
        if self.access_log is None:
            return
        self.access_log.write({
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "protocol": protocol, "client": client, "request": request, "status": status,
        })

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.close()
        if self.tracer is not None:
            self.tracer.close()


__all__ = ["REQUEST_ID_HEADER", "RequestIds", "RequestLog", "RequestRecord"]

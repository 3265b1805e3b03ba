"""OpenTelemetry spans for inference requests (the optional `tracing` extra).

Spans are made after the answer is sent, from timestamps taken along the way, for the requests
the trace settings sample (surge/server/trace_settings.py, Triton's trace extension): one SERVER
span `surge.infer` per request (child of the caller's W3C `traceparent` when there is one), with
children `decode`, `queue`, `batch` (with `compute`, the worker's own time, inside it) and
`encode`. Building them after the fact keeps the SDK off the request path.

A provider made here (`--tracing`) is shut down when the server stops, for at most
`FLUSH_ON_STOP_S`: the SDK's own exit hook waits up to 30 s per batch for a collector that
does not answer, which held a drained server's exit past its grace period.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any

from surge.errors import SurgeError
from surge.server.trace_settings import new_settings

if TYPE_CHECKING:
    from surge.server.observe import RequestRecord

log = logging.getLogger(__name__)

_INSTALL = "pip install 'surge[tracing]' (opentelemetry-sdk)"
FLUSH_ON_STOP_S = 5.0  # how long a stopping server gives the collector the last spans
# A traceparent the W3C propagator would refuse (with a warning per request): left out first.
_MAX_TRACEPARENT = 512
# Nor a tracestate it would warn about (too long, too many members, a malformed member): left
# out, the parent kept. The grammar is W3C's (trace-context, "tracestate" list members).
_MAX_TRACESTATE = 8192
_MAX_TRACESTATE_MEMBERS = 32
_TRACESTATE_MEMBER = re.compile(
    r"(?:[a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MADE_HERE: weakref.WeakSet[Any] = weakref.WeakSet()  # providers this module shuts down


EXPORTERS = ("console", "otlp")


def check_exporter(exporter: str) -> None:
    """That `exporter` is one of EXPORTERS, its packages are installed and the span processor's
    OTEL_BSP_* settings are usable (SurgeError)."""
    _span_exporter_class(exporter)
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    _batch_processor(ConsoleSpanExporter()).shutdown()


def _span_exporter_class(exporter: str) -> Any:
    try:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
    except ImportError:
        raise SurgeError(f"--tracing needs the OpenTelemetry SDK: {_INSTALL}") from None
    if exporter == "console":
        return ConsoleSpanExporter
    if exporter != "otlp":
        raise SurgeError(f"unknown --tracing exporter {exporter!r}: use console or otlp")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise SurgeError("--tracing otlp needs opentelemetry-exporter-otlp-proto-http") from None
    return OTLPSpanExporter


def tracer_provider(exporter: str) -> Any:
    """An SDK TracerProvider exporting spans to `console` or `otlp` (OTEL_EXPORTER_OTLP_*)."""
    span_exporter = _span_exporter_class(exporter)()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    service = os.environ.get("OTEL_SERVICE_NAME", "surge")
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              shutdown_on_exit=False)  # Tracer.close, bounded, instead
    provider.add_span_processor(_batch_processor(span_exporter))
    _MADE_HERE.add(provider)
    return provider


def _batch_processor(span_exporter: Any) -> Any:
    """The SDK's BatchSpanProcessor for `span_exporter`. It reads OTEL_BSP_* and raises
    ValueError for a value out of its range (`OTEL_BSP_SCHEDULE_DELAY=-5`): a traceback at
    start, from each front end; here a SurgeError naming the settings."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    try:
        return BatchSpanProcessor(span_exporter)
    except ValueError as exc:
        settings = ", ".join(f"{k}={v!r}" for k, v in sorted(os.environ.items())
                             if k.startswith("OTEL_BSP_"))
        raise SurgeError(f"--tracing: the OpenTelemetry span processor refuses its settings: "
                         f"{exc} ({settings or 'no OTEL_BSP_* variable set'})") from None


class Tracer:
    """Turns finished RequestRecords into spans on `provider` (the global one when None)."""

    def __init__(self, provider: Any = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            raise SurgeError(f"tracing needs OpenTelemetry: {_INSTALL}") from None
        self._trace = trace
        self._provider = provider
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer("surge.server")
        self._propagator = TraceContextTextMapPropagator()
        self.settings = new_settings()  # which requests are traced (the trace extension)

    def close(self) -> None:
        """Hand the queued spans to the collector, for at most FLUSH_ON_STOP_S (a provider
        made by `tracer_provider`; one given by the caller is the caller's to shut down)."""
        if self._provider is None or self._provider not in _MADE_HERE:
            return
        stopping = threading.Thread(target=self._provider.shutdown, daemon=True,
                                    name="surge-tracing-stop")
        stopping.start()
        stopping.join(FLUSH_ON_STOP_S)
        if stopping.is_alive():
            log.warning("tracing: the collector did not take the last spans within %.0f s; "
                        "they are dropped", FLUSH_ON_STOP_S)

    def record(self, record: RequestRecord) -> None:
        """The request's span and its children, timed from `record`, when the trace settings
        sample the request."""
        if not self.settings.sample(record.model):
            return
        parent = self._propagator.extract(_carrier(record.traceparent, record.tracestate))
        attributes = {"surge.request_id": record.request_id, "surge.model": record.model,
                      "surge.protocol": record.protocol, "surge.status": str(record.status),
                      "client.address": record.client}
        if record.version is not None:
            attributes["surge.model_version"] = str(record.version)
        if record.item_id is not None:
            attributes["surge.id"] = record.item_id
        root = self._tracer.start_span("surge.infer", context=parent,
                                       kind=self._trace.SpanKind.SERVER,
                                       start_time=record.wall(record.started),
                                       attributes=attributes)
        if record.failed:
            root.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(record.status)))
        inside = self._trace.set_span_in_context(root)
        batch = inside
        for name, start, end, extra in record.phases():
            # compute happens inside its batch; every other phase is a child of the request
            span = self._tracer.start_span(name, context=batch if name == "compute" else inside,
                                           start_time=record.wall(start), attributes=extra)
            span.end(end_time=record.wall(end))
            if name == "batch":
                batch = self._trace.set_span_in_context(span)
        root.end(end_time=record.wall(record.finished))


def _carrier(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The W3C headers for the propagator, without those it would warn about once per
    request: no traceparent starts a trace of its own; no tracestate keeps the parent."""
    if not traceparent or len(traceparent) > _MAX_TRACEPARENT:
        return {}
    carrier = {"traceparent": traceparent}
    if tracestate is not None and _usable_tracestate(tracestate):
        carrier["tracestate"] = tracestate
    return carrier


def _usable_tracestate(tracestate: str) -> bool:
    if len(tracestate) > _MAX_TRACESTATE:
        return False
    # empty members and the spaces around members are allowed (W3C, RFC 9110 5.6.1)
    members = [m for m in (m.strip(" \t") for m in tracestate.split(",")) if m]
    return (len(members) <= _MAX_TRACESTATE_MEMBERS
            and all(_TRACESTATE_MEMBER.fullmatch(m) for m in members))


__all__ = ["Tracer", "tracer_provider"]

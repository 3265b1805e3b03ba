"""OpenTelemetry spans for inference requests (the optional `tracing` extra).

Spans are made after the answer is sent, from timestamps taken along the way: one SERVER span
`surge.infer` per request (child of the caller's W3C `traceparent` when there is one), with
children `decode`, `queue`, `batch` (with `compute`, the worker's own time, inside it) and
`encode`. Building them after the fact keeps the SDK off the request path.

A provider made here (`--tracing`) is shut down when the server stops, for at most
`FLUSH_ON_STOP_S`: the SDK's own exit hook waits up to 30 s per batch for a collector that
does not answer, which held a drained server's exit past its grace period.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from surge.errors import SurgeError

if TYPE_CHECKING:
    from surge.server.observe import RequestRecord

log = logging.getLogger(__name__)

_INSTALL = "pip install 'surge[tracing]' (opentelemetry-sdk)"
FLUSH_ON_STOP_S = 5.0  # how long a stopping server gives the collector the last spans
# A traceparent the W3C propagator would refuse (with a warning per request): left out first.
_MAX_TRACEPARENT = 512
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
        """The request's span and its children, timed from `record`."""
        traceparent = record.traceparent
        carrier = ({"traceparent": traceparent}
                   if traceparent and len(traceparent) <= _MAX_TRACEPARENT else {})
        parent = self._propagator.extract(carrier)
        attributes = {"surge.request_id": record.request_id, "surge.model": record.model,
                      "surge.protocol": record.protocol, "surge.status": str(record.status),
                      "client.address": record.client}
        if record.version is not None:
            attributes["surge.model_version"] = str(record.version)
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


__all__ = ["Tracer", "tracer_provider"]

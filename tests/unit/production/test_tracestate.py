"""The caller's W3C `tracestate` is kept on the request's span beside its `traceparent`; one the
propagator would refuse (too long, too many members, malformed) is left out quietly, the parent
kept, and never fails the request."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from surge.server.observe import RequestLog

pytest.importorskip("opentelemetry.sdk")

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _span(traceparent: str | None, tracestate: str | None, **begin: Any) -> Any:
    """The surge.infer span of one request traced with these headers."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from surge.server.tracing import Tracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    requests = RequestLog(None, Tracer(provider))
    record = requests.begin("http", "m", "id-1", "127.0.0.1:1", traceparent, 0.0,
                            tracestate=tracestate, **begin)
    requests.finish(record, 200, failed=False)
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "surge.infer"]
    return root


def test_the_callers_tracestate_is_kept_on_the_span() -> None:
    root = _span(PARENT, "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7")
    # Before: only traceparent reached the propagator; the span's trace_state was empty.
    assert dict(root.context.trace_state) == {"congo": "t61rcWkgMzE",
                                              "rojo": "00f067aa0ba902b7"}
    assert dict(root.parent.trace_state) == dict(root.context.trace_state)
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"


@pytest.mark.parametrize("tracestate", [
    "congo=" + "x" * 200 + "," + ",".join(f"k{i}=v" for i in range(2000)),  # past 8192 chars
    ",".join(f"k{i}=v" for i in range(33)),  # more members than W3C allows
    "congo=t61rcWkgMzE,NOT A MEMBER",
    "Upper=1",
])
def test_an_unusable_tracestate_is_dropped_quietly_and_the_parent_kept(
        tracestate: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        root = _span(PARENT, tracestate)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert not dict(root.context.trace_state)


def test_a_tracestate_without_traceparent_starts_a_trace_of_its_own() -> None:
    root = _span(None, "congo=t61rcWkgMzE")
    assert root.parent is None
    assert not dict(root.context.trace_state)


def test_a_streamed_requests_own_id_is_on_its_span_and_log_line_bounded() -> None:
    root = _span(PARENT, None, item_id="frame-7")
    assert root.attributes["surge.id"] == "frame-7"
    assert root.attributes["surge.request_id"] == "id-1"
    long = RequestLog(None, object()).begin("grpc", "m", "s-1", "", None, 0.0, item_id="y" * 5000)
    assert long is not None
    assert long.log_line()["id"] == "y" * 128 + "..."
    unary = RequestLog(None, object()).begin("grpc", "m", "s-1", "", None, 0.0)
    assert unary is not None
    assert "id" not in unary.log_line()

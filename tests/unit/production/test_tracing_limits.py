"""Tracing that must not hurt serving: a collector that never answers cannot hold a stopped
server's exit, and a traceparent too long for W3C is not warned about once per request."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from surge.server.observe import RequestRecord

pytest.importorskip("opentelemetry.sdk")

# A server process in miniature: `--tracing console` whose exporter hangs (a collector that
# accepts and never answers), one request traced, the request log closed as a drain ends it.
_STOPPING_SERVER = """
import time
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
ConsoleSpanExporter.export = lambda self, spans: time.sleep(3600)
import surge.server.tracing as tracing
from surge.server.observe import RequestLog
tracing.FLUSH_ON_STOP_S = 1.0
requests = RequestLog(None, tracing.Tracer(tracing.tracer_provider("console")))
record = requests.begin("http", "m", "id-1", "127.0.0.1:1", None, 0.0)
requests.finish(record, 200, failed=False)
requests.close()
"""


def test_a_silent_collector_does_not_hold_the_exit() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _STOPPING_SERVER], capture_output=True,
                            text=True, timeout=120, check=False)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # Before: the SDK's exit hook waited 30 s for the export, past a drain's grace.
    assert took < 15, f"exit took {took:.0f} s"
    assert "did not take the last spans" in result.stderr


def test_an_overlong_traceparent_starts_a_new_trace_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from surge.server.tracing import Tracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = Tracer(provider)
    huge = "00-" + "a" * 60_000
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            record = RequestRecord("http", "id", "127.0.0.1:1", "m", huge)
            record.finished = record.started
            tracer.record(record)
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # was one per request
    assert len(exporter.get_finished_spans()) == 3
    assert all(span.parent is None for span in exporter.get_finished_spans())


@pytest.mark.parametrize(("variable", "value"), [("OTEL_BSP_SCHEDULE_DELAY", "-5"),
                                                 ("OTEL_BSP_MAX_QUEUE_SIZE", "0")])
def test_span_processor_settings_out_of_range_are_one_line_errors(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    from surge.errors import SurgeError
    from surge.server.tracing import check_exporter, tracer_provider

    monkeypatch.setenv(variable, value)
    # Before: `surge serve --tracing console` passed its check, then each front end died with
    # the SDK's ValueError and a traceback (exit code 1).
    for make in (check_exporter, tracer_provider):
        with pytest.raises(SurgeError, match=f"refuses its settings: .*{variable}='{value}'"):
            make("console")

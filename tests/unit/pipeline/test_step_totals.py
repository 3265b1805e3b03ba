"""Each pipeline step's durations and CPU, kept as plain totals and exposed by a collector,
read exactly as prometheus_client's own histogram and counter would show them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from surge.engine.metrics import SurgeMetrics
from surge.pipeline.metrics import _SECONDS, step_metrics

# On a bound, between bounds, under the first, past the last.
SECONDS = (0.0001, 0.0003, 0.0005, 0.00001, 0.004, 1.0, 31.0, 0.0025)


def _lines(text: bytes, prefix: str) -> list[str]:
    return [line for line in text.decode().splitlines() if line.startswith(prefix)]


def test_step_durations_read_as_a_prometheus_histogram() -> None:
    reference = CollectorRegistry()
    histogram = Histogram("surge_pipeline_step_duration_seconds", "reference",
                          ["model", "step"], buckets=_SECONDS, registry=reference)
    metrics = SurgeMetrics()
    times = step_metrics(metrics).totals.step_times("p", "decode")
    for seconds in SECONDS:
        histogram.labels("p", "decode").observe(seconds)
        times.observe(seconds)
    for suffix in ("_bucket", "_count", "_sum"):
        prefix = f"surge_pipeline_step_duration_seconds{suffix}"
        assert _lines(generate_latest(metrics.registry), prefix) == _lines(
            generate_latest(reference), prefix)


def test_step_cpu_is_a_counter_of_seconds() -> None:
    metrics = SurgeMetrics()
    cpu = step_metrics(metrics).totals.step_cpu("p", "decode")
    cpu.add(1_500_000, inline=True)
    cpu.add(500_000, inline=False)
    assert metrics.registry.get_sample_value(
        "surge_pipeline_step_cpu_seconds_total", {"model": "p", "step": "decode"}) == 0.002
    assert cpu.snapshot() == {"calls": 2, "cpu_ns": 2_000_000, "inline_calls": 1,
                              "inline_cpu_ns": 1_500_000}


def test_a_reloaded_pipeline_keeps_counting_where_it_was() -> None:
    metrics = SurgeMetrics()
    totals = step_metrics(metrics).totals
    assert step_metrics(metrics).totals is totals  # one collector per registry
    assert totals.step_cpu("p", "decode") is totals.step_cpu("p", "decode")
    assert totals.step_times("p", "decode") is totals.step_times("p", "decode")
    assert totals.step_cpu("p", "keep") is not totals.step_cpu("p", "decode")

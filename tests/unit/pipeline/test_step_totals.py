"""Each pipeline step's durations and CPU, kept as plain totals and exposed by a collector,
read exactly as prometheus_client's own histogram and counter would show them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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



# Run in a process of its own: prometheus_client picks file-backed values when first imported.
_SEVERAL_FRONT_ENDS = """
import sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from surge.engine.metrics import SurgeMetrics
from surge.pipeline.metrics import step_metrics

metrics = SurgeMetrics()
steps = step_metrics(metrics)
exported = CollectorRegistry()
multiprocess.MultiProcessCollector(exported)
times = steps.totals.step_times("p", "decode")
for seconds in {seconds}:
    times.observe(seconds)
steps.totals.step_cpu("p", "decode").add(1_500_000, inline=True)
steps.share()
texts = [generate_latest(exported), generate_latest(metrics.registry)]
times.observe(0.003)  # a request: the files are not written until the next copy
texts.append(generate_latest(exported))
steps.share()
texts += [generate_latest(exported), generate_latest(metrics.registry)]
sys.stdout.buffer.write(b"\\0".join(texts))
"""


def test_with_several_front_ends_the_totals_are_copied_into_the_shared_files(
        tmp_path: Path) -> None:
    """`--frontends N` exports prometheus_client's multiprocess files, not the registry: the
    step totals are copied there, reading exactly as the registry's collector shows them."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    script = _SEVERAL_FRONT_ENDS.format(seconds=SECONDS)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    copied, registry, unchanged, recopied, registry_after = done.stdout.split(b"\0")
    for prefix in ("surge_pipeline_step_duration_seconds", "surge_pipeline_step_cpu_seconds"):
        assert _lines(copied, prefix)
        assert sorted(_lines(copied, prefix)) == sorted(_lines(registry, prefix))
        assert _lines(unchanged, prefix) == _lines(copied, prefix)
        assert sorted(_lines(recopied, prefix)) == sorted(_lines(registry_after, prefix))
    assert _lines(recopied, "surge_pipeline_step_duration_seconds_count") == [
        f'surge_pipeline_step_duration_seconds_count{{model="p",step="decode"}} {len(SECONDS) + 1}.0']

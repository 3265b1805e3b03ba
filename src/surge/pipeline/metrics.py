"""Per-step metrics of pipelines, in the server's own Prometheus registry, and the running totals
behind them: each step's durations (a histogram) and each processor step's CPU (a counter).

The totals are plain attributes updated on the event loop, and a collector turns them into
`surge_pipeline_step_duration_seconds` and `surge_pipeline_step_cpu_seconds_total` when the
registry is read: a prometheus_client child takes a lock and, for a histogram, walks its buckets
in Python on every observation (1.7 us a step, three times a request for a three-step pipeline,
against 0.3 us here). A step keeps its totals across reloads of its pipeline, as a labelled
child would: counters never go back.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from surge.engine.metrics import SurgeMetrics

# Steps range from a few microseconds (top-k labels) to a model's batch (tens of ms or more).
_SECONDS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0)
_LE = tuple(str(bound) for bound in _SECONDS) + ("+Inf",)


class StepTimes:
    """One step's durations: a count per histogram bucket (the last one past every bound) and
    their sum; updated on the event loop only, so no lock."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_SECONDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, Prometheus's `le` (a value on a bound is in it)
        self.counts[bisect_left(_SECONDS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        running, buckets = 0, []
        for le, count in zip(_LE, self.counts, strict=True):
            running += count
            buckets.append((le, float(running)))
        return buckets


class StepCpu:
    """One processor step's running CPU totals; updated on the event loop only (a processor
    thread hands its figure back with the result), so no lock."""

    __slots__ = ("calls", "cpu_ns", "inline_calls", "inline_cpu_ns")

    def __init__(self) -> None:
        self.calls = 0
        self.cpu_ns = 0
        self.inline_calls = 0
        self.inline_cpu_ns = 0

    def add(self, cpu_ns: int, inline: bool) -> None:
        """One call of the step that took `cpu_ns` of its thread's CPU."""
        self.calls += 1
        self.cpu_ns += cpu_ns
        if inline:
            self.inline_calls += 1
            self.inline_cpu_ns += cpu_ns

    def snapshot(self) -> dict[str, int]:
        return {"calls": self.calls, "cpu_ns": self.cpu_ns, "inline_calls": self.inline_calls,
                "inline_cpu_ns": self.inline_cpu_ns}


class StepTotals(Collector):
    """Every pipeline step's totals in one server, exposed when its registry is collected."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], StepTimes] = {}
        self.cpu: dict[tuple[str, str], StepCpu] = {}

    def step_times(self, pipeline: str, step: str) -> StepTimes:
        return self.times.setdefault((pipeline, step), StepTimes())

    def step_cpu(self, pipeline: str, step: str) -> StepCpu:
        return self.cpu.setdefault((pipeline, step), StepCpu())

    def collect(self) -> Iterator[Metric]:
        durations = HistogramMetricFamily(
            "surge_pipeline_step_duration_seconds",
            "Time one pipeline step took for a request (a model step: its queue and batch; a "
            "processor step: its thread).", labels=["model", "step"])
        for labels, times in list(self.times.items()):
            durations.add_metric(list(labels), times.cumulative(), times.sum)
        cpu = CounterMetricFamily(
            "surge_pipeline_step_cpu_seconds",
            "CPU time of a pipeline's processor step in the front end: the thread CPU of each "
            "call, on the event loop or in a processor thread.", labels=["model", "step"])
        for labels, totals in list(self.cpu.items()):
            cpu.add_metric(list(labels), totals.cpu_ns / 1e9)
        yield durations
        yield cpu


@dataclass(frozen=True)
class StepMetrics:
    totals: StepTotals
    failures: Counter


_by_server: weakref.WeakKeyDictionary[SurgeMetrics, StepMetrics] = weakref.WeakKeyDictionary()


def step_metrics(metrics: SurgeMetrics) -> StepMetrics:
    """The step metrics of one server (made once per registry: names may be registered once)."""
    found = _by_server.get(metrics)
    if found is None:
        totals = StepTotals()
        metrics.registry.register(totals)
        found = StepMetrics(totals, Counter("surge_pipeline_step_failures",
                                            "Requests a pipeline step failed.", ["model", "step"],
                                            registry=metrics.registry))
        _by_server[metrics] = found
    return found

"""Per-step metrics of pipelines, in the server's own Prometheus registry, and the running totals
behind them: each step's durations (a histogram) and each processor step's CPU (a counter).

The totals are plain attributes updated on the event loop, and a collector turns them into
`surge_pipeline_step_duration_seconds` and `surge_pipeline_step_cpu_seconds_total` when the
registry is read: a prometheus_client child takes a lock and, for a histogram, walks its buckets
in Python on every observation (1.7 us a step, three times a request for a three-step pipeline,
against 0.3 us here). A step keeps its totals across reloads of its pipeline, as a labelled
child would: counters never go back.

With several front ends (`--frontends N`) a scrape exports prometheus_client's multiprocess files,
not the registry, so a collector's figures would be missing: `SharedCopy` writes each front end's
totals into its own files every second and when a pipeline stops (the request path still only
adds to the plain totals), and they sum over front ends like every other counter and histogram.
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, values
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from surge.engine.metrics import SurgeMetrics

# Steps range from a few microseconds (top-k labels) to a model's batch (tens of ms or more).
_SECONDS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0)
_LE = tuple(str(bound) for bound in _SECONDS) + ("+Inf",)
DURATION = ("surge_pipeline_step_duration_seconds", "Time one pipeline step took for a request (a "
            "model step: its queue and batch; a processor step: its thread).")
CPU = ("surge_pipeline_step_cpu_seconds", "CPU time of a pipeline's processor step in the front "
       "end: the thread CPU of each call, on the event loop or in a processor thread.")
_LABELS = ("model", "step")
SHARE_EVERY_S = 1.0  # how old another front end's step figures in a scrape can be


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
        durations = HistogramMetricFamily(*DURATION, labels=list(_LABELS))
        for labels, times in list(self.times.items()):
            durations.add_metric(list(labels), times.cumulative(), times.sum)
        cpu = CounterMetricFamily(*CPU, labels=list(_LABELS))
        for labels, totals in list(self.cpu.items()):
            cpu.add_metric(list(labels), totals.cpu_ns / 1e9)
        yield durations
        yield cpu


class SharedCopy:
    """The totals copied into this front end's multiprocess files (prometheus_client's own
    values, as its Histogram and Counter would write them), by a thread every SHARE_EVERY_S:
    the event loop never writes a file for them. A copy sets each value to its running total,
    so it is idempotent and needs no lock with the loop (reads of ints under the GIL)."""

    def __init__(self, totals: StepTotals) -> None:
        self._totals = totals
        self._times: dict[tuple[str, str], tuple[list[Any], Any, list[int]]] = {}
        self._cpu: dict[tuple[str, str], tuple[Any, list[int]]] = {}
        self._lock = threading.Lock()  # the thread's copy against a stopping pipeline's
        threading.Thread(target=self._run, name="surge-step-metrics", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(SHARE_EVERY_S)
            self.copy()

    def copy(self) -> None:
        with self._lock:
            for labels, times in list(self._totals.times.items()):
                self._copy_times(labels, times)
            for labels, cpu in list(self._totals.cpu.items()):
                value, copied = self._cpu.get(labels) or self._open_cpu(labels)
                if cpu.cpu_ns != copied[0]:
                    copied[0] = cpu.cpu_ns
                    value.set(copied[0] / 1e9)

    def _copy_times(self, labels: tuple[str, str], times: StepTimes) -> None:
        buckets, total, copied = self._times.get(labels) or self._open_times(labels)
        counts = list(times.counts)
        if counts == copied:
            return
        for index, count in enumerate(counts):  # per bucket, not cumulative, as prometheus'
            if count != copied[index]:
                buckets[index].set(float(count))
        copied[:] = counts
        total.set(times.sum)

    def _open_times(self, labels: tuple[str, str]) -> tuple[list[Any], Any, list[int]]:
        name = DURATION[0]
        buckets = [values.ValueClass("histogram", name, name + "_bucket", (*_LABELS, "le"),
                                     (*labels, le), DURATION[1]) for le in _LE]
        total = values.ValueClass("histogram", name, name + "_sum", _LABELS, labels, DURATION[1])
        self._times[labels] = opened = (buckets, total, [0] * len(_LE))
        return opened

    def _open_cpu(self, labels: tuple[str, str]) -> tuple[Any, list[int]]:
        value = values.ValueClass("counter", CPU[0], CPU[0] + "_total", _LABELS, labels, CPU[1])
        self._cpu[labels] = opened = (value, [0])
        return opened


def _multiprocess() -> bool:
    """Whether prometheus_client writes this process's values to files (several front ends)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


@dataclass(frozen=True)
class StepMetrics:
    totals: StepTotals
    failures: Counter
    shared: SharedCopy | None = None  # several front ends only

    def share(self) -> None:
        """Copy the totals into the multiprocess files now (a pipeline stopping)."""
        if self.shared is not None:
            self.shared.copy()


_by_server: weakref.WeakKeyDictionary[SurgeMetrics, StepMetrics] = weakref.WeakKeyDictionary()


def step_metrics(metrics: SurgeMetrics) -> StepMetrics:
    """The step metrics of one server (made once per registry: names may be registered once)."""
    found = _by_server.get(metrics)
    if found is None:
        totals = StepTotals()
        metrics.registry.register(totals)
        found = StepMetrics(totals, Counter("surge_pipeline_step_failures",
                                            "Requests a pipeline step failed.", ["model", "step"],
                                            registry=metrics.registry),
                            SharedCopy(totals) if _multiprocess() else None)
        _by_server[metrics] = found
    return found

"""Per-step metrics of pipelines, in the server's own Prometheus registry, and the running CPU
totals of each processor step that the pipeline's statistics report."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from surge.engine.metrics import SurgeMetrics

# Steps range from a few microseconds (top-k labels) to a model's batch (tens of ms or more).
_SECONDS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0)


@dataclass(frozen=True)
class StepMetrics:
    duration: Histogram
    failures: Counter
    cpu: Counter


_by_server: weakref.WeakKeyDictionary[SurgeMetrics, StepMetrics] = weakref.WeakKeyDictionary()


def step_metrics(metrics: SurgeMetrics) -> StepMetrics:
    """The step metrics of one server (made once per registry: names may be registered once)."""
    found = _by_server.get(metrics)
    if found is None:
        found = StepMetrics(
            Histogram("surge_pipeline_step_duration_seconds",
                      "Time one pipeline step took for a request (a model step: its queue and "
                      "batch; a processor step: its thread).", ["model", "step"],
                      buckets=_SECONDS, registry=metrics.registry),
            Counter("surge_pipeline_step_failures", "Requests a pipeline step failed.",
                    ["model", "step"], registry=metrics.registry),
            Counter("surge_pipeline_step_cpu_seconds",
                    "CPU time of a pipeline's processor step in the front end: the thread CPU "
                    "of each call, on the event loop or in a processor thread.",
                    ["model", "step"], registry=metrics.registry))
        _by_server[metrics] = found
    return found


class StepCpu:
    """One processor step's running CPU totals; updated on the event loop only (a processor
    thread hands its figure back with the result), so no lock."""

    __slots__ = ("_counter", "calls", "cpu_ns", "inline_calls", "inline_cpu_ns")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter  # the step's child of surge_pipeline_step_cpu_seconds
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
        self._counter.inc(cpu_ns / 1e9)

    def snapshot(self) -> dict[str, int]:
        return {"calls": self.calls, "cpu_ns": self.cpu_ns, "inline_calls": self.inline_calls,
                "inline_cpu_ns": self.inline_cpu_ns}

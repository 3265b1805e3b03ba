"""Per-step metrics of pipelines, in the server's own Prometheus registry."""

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
                    ["model", "step"], registry=metrics.registry))
        _by_server[metrics] = found
    return found

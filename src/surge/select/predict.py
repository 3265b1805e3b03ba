"""A cheap analytic prediction of serving throughput and p99 from in-process profiles.

It is a queueing sketch, not a simulator: good enough to rank and prune hundreds of
configurations in milliseconds, so that only a few are measured for real. The report shows
its p99 beside the measured one for every configuration run through the server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from surge.evaluate.profile import ProfileReport
from surge.select.space import Candidate, Load

_P99_EXP = math.log(100.0)  # p99 of an exponential tail is ln(100) ~ 4.6 times its mean


@dataclass(frozen=True)
class Measurement:
    """Throughput and p99 of one configuration under the SLO's load, predicted or measured."""

    throughput: float  # requests/s served
    p99_ms: float
    rung: str = "predicted"
    errors: int = 0
    capacity: float | None = None  # requests/s the configuration can sustain at most
    p50_ms: float | None = None
    p90_ms: float | None = None


@dataclass(frozen=True)
class ServingCosts:
    """Time a batch spends outside the engine (decode, queue hand-off, shared-memory copies,
    response), fitted to a measured run. Charged per batch: batching amortizes it, which is
    much of why batching pays off in serving."""

    batch_overhead_ms: float = 0.0
    p99_scale: float = 1.0  # measured / modelled p99 of the calibration run: the tail the
    # model does not see (other processes on the cores, scheduling jitter)


def predict(
    profile: ProfileReport, candidate: Candidate, load: Load, costs: ServingCosts | None = None
) -> Measurement:
    """Predicted throughput and p99 of `candidate` (whose variant `profile` measured)."""
    costs = costs or ServingCosts()
    if load.concurrency is not None:
        m = _closed_loop(profile, candidate, load.concurrency, costs)
    else:
        assert load.rate is not None
        m = _open_loop(profile, candidate, load.rate, costs)
    return replace(m, p99_ms=m.p99_ms * costs.p99_scale)


def _service_ms(profile: ProfileReport, c: Candidate, batch: float) -> float:
    return profile.service_ms(max(1, math.ceil(batch)), c.instances, c.threads)


def _closed_loop(profile: ProfileReport, c: Candidate, clients: int, costs: ServingCosts
                 ) -> Measurement:
    # Each instance holds clients/instances requests; they go out in batches of up to B.
    per_instance = clients / c.instances
    batch = min(c.max_batch_size, max(1.0, per_instance))
    service = _service_ms(profile, c, batch) + costs.batch_overhead_ms
    # A batch that cannot fill waits out the whole queue delay: its clients are all inside it.
    cycle = service + (c.max_queue_delay_ms if batch < c.max_batch_size else 0.0)
    capacity = c.instances * batch * 1000.0 / cycle
    mean_ms = clients * 1000.0 / capacity  # Little's law
    # A request that just missed a batch waits for it to finish before its own starts.
    p99 = mean_ms + service
    return Measurement(capacity, p99, capacity=capacity, p50_ms=mean_ms)


def _open_loop(profile: ProfileReport, c: Candidate, rate: float, costs: ServingCosts
               ) -> Measurement:
    per_instance = rate / c.instances / 1000.0  # requests per ms
    full = _service_ms(profile, c, c.max_batch_size) + costs.batch_overhead_ms
    capacity = c.instances * c.max_batch_size * 1000.0 / full
    if rate >= capacity:
        return Measurement(capacity, math.inf, capacity=capacity)
    # Fixed point: a batch holds what arrives during one service plus the time spent forming it.
    batch = 1.0
    for _ in range(20):
        form = min(c.max_queue_delay_ms, max(0.0, (c.max_batch_size - batch) / per_instance))
        service = _service_ms(profile, c, batch) + costs.batch_overhead_ms
        batch = min(float(c.max_batch_size), max(1.0, per_instance * (service + form)))
    form = 0.0 if batch >= c.max_batch_size else min(c.max_queue_delay_ms, 1.0 / per_instance)
    service = _service_ms(profile, c, batch) + costs.batch_overhead_ms
    rho = per_instance * service / batch
    if rho >= 1.0:
        return Measurement(capacity, math.inf, capacity=capacity)
    wait = rho / (2.0 * (1.0 - rho)) * service  # M/D/1 mean wait, in batch units
    return Measurement(rate, form + service + _P99_EXP * wait, capacity=capacity,
                       p50_ms=form + service + wait)

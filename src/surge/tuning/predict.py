"""A cheap analytic prediction of serving throughput and p99 from in-process profiles.

It is a queueing sketch, not a simulator: good enough to rank and prune hundreds of
configurations in milliseconds, so that only a few are measured for real. The report shows
its p99 beside the measured one for every configuration run through the server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from surge.evaluate.profile import ProfileReport
from surge.tuning.space import Candidate, Load

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
    """Time a batch spends outside the engine, fitted to measured runs: a fixed part per batch
    (queue hand-off, dispatch to a worker, shared-memory slot) that batching amortizes, and a
    part per request (HTTP parsing, tensor decode and copy, response) that it does not. On
    few cores both include the CPU the front end and the load generator take from workers."""

    batch_overhead_ms: float = 0.0
    request_overhead_ms: float = 0.0
    p99_scale: float = 1.0  # measured / modelled p99 over the fitted runs: the tail the
    # model does not see (other processes on the cores, scheduling jitter)

    def outside_ms(self, batch: float) -> float:
        return self.batch_overhead_ms + batch * self.request_overhead_ms


@dataclass(frozen=True)
class Observation:
    """A served run reduced to what the cost fit needs."""

    batch: float  # requests per batch the model expects at this load
    outside_ms: float  # measured batch time minus the profiled engine time
    p99_ratio: float | None  # measured p99 / modelled p99 before scaling


def full_batch(candidate: Candidate, load: Load) -> int:
    """Requests in a full batch: as many whole requests of `load.rows` rows as max batch holds."""
    return max(1, load.requests_per_batch(candidate.max_batch_size))


def expected_batch(candidate: Candidate, load: Load) -> float:
    """Requests per batch under `load` as the closed-loop model sees it (open loop: 1)."""
    if load.concurrency is None:
        return 1.0
    return min(full_batch(candidate, load), max(1.0, load.concurrency / candidate.instances))


def observe(profile: ProfileReport, candidate: Candidate, load: Load, measured: Measurement
            ) -> Observation | None:
    """What a served run says about the costs outside the engine; None if it says nothing."""
    if measured.errors or measured.throughput <= 0 or not math.isfinite(measured.p99_ms):
        return None
    batch = expected_batch(candidate, load)
    engine = _service_ms(profile, candidate, batch, load.rows)
    if load.concurrency is not None:
        delay = candidate.max_queue_delay_ms if batch < full_batch(candidate, load) else 0.0
        cycle = candidate.instances * batch * 1000.0 / measured.throughput
        outside = cycle - engine - delay
    elif measured.p50_ms is not None:  # open loop below saturation: the median is one pass
        outside = measured.p50_ms - engine
    else:
        return None
    modelled = predict(profile, candidate, load, ServingCosts(max(0.0, outside))).p99_ms
    ratio = measured.p99_ms / modelled if math.isfinite(modelled) and modelled > 0 else None
    return Observation(batch, outside, ratio)


def fit_costs(observations: list[Observation]) -> ServingCosts:
    """Least squares `outside = batch_overhead + batch x request_overhead`, both >= 0; the p99
    scale is the median measured/modelled ratio, bounded so one noisy run cannot make every
    prediction absurd."""
    if not observations:
        return ServingCosts()
    b = np.array([o.batch for o in observations])
    y = np.array([o.outside_ms for o in observations])
    per_batch, per_request = float(max(0.0, y.mean())), 0.0
    if len(set(b.tolist())) > 1:
        (per_batch, per_request), *_ = np.linalg.lstsq(np.stack([np.ones_like(b), b], 1), y,
                                                       rcond=None)
        if per_request < 0:
            per_batch, per_request = float(max(0.0, y.mean())), 0.0
        elif per_batch < 0:
            per_batch, per_request = 0.0, float(max(0.0, (y * b).sum() / (b * b).sum()))
    ratios = [o.p99_ratio for o in observations if o.p99_ratio is not None]
    scale = float(np.clip(np.median(ratios), 0.5, 10.0)) if ratios else 1.0
    return ServingCosts(float(per_batch), float(per_request), scale)


def predict(
    profile: ProfileReport, candidate: Candidate, load: Load, costs: ServingCosts | None = None
) -> Measurement:
    """Predicted throughput and p99 of `candidate` (whose variant `profile` measured)."""
    costs = costs or ServingCosts()
    if load.concurrency is not None:
        m = _closed_loop(profile, candidate, load, costs)
    else:
        m = _open_loop(profile, candidate, load, costs)
    return replace(m, p99_ms=m.p99_ms * costs.p99_scale)


def _service_ms(profile: ProfileReport, c: Candidate, batch: float, rows: int) -> float:
    """Engine time of a batch of `batch` requests of `rows` rows each."""
    return profile.service_ms(max(1, math.ceil(batch)) * rows, c.instances, c.threads)


def _closed_loop(profile: ProfileReport, c: Candidate, load: Load, costs: ServingCosts
                 ) -> Measurement:
    # Each instance holds clients/instances requests; they go out in batches of up to B rows.
    assert load.concurrency is not None
    clients = load.concurrency
    batch = expected_batch(c, load)
    service = _service_ms(profile, c, batch, load.rows) + costs.outside_ms(batch)
    # A batch that cannot fill waits out the whole queue delay: its clients are all inside it.
    cycle = service + (c.max_queue_delay_ms if batch < full_batch(c, load) else 0.0)
    capacity = c.instances * batch * 1000.0 / cycle
    mean_ms = clients * 1000.0 / capacity  # Little's law
    # A request that just missed a batch waits for it to finish before its own starts.
    p99 = mean_ms + service
    return Measurement(capacity, p99, capacity=capacity, p50_ms=mean_ms)


def _open_loop(profile: ProfileReport, c: Candidate, load: Load, costs: ServingCosts
               ) -> Measurement:
    assert load.rate is not None
    rate, rows, most = load.rate, load.rows, full_batch(c, load)
    per_instance = rate / c.instances / 1000.0  # requests per ms
    full = _service_ms(profile, c, most, rows) + costs.outside_ms(most)
    capacity = c.instances * most * 1000.0 / full
    if rate >= capacity:
        return Measurement(capacity, math.inf, capacity=capacity)
    # Fixed point: a batch holds what arrives during one service plus the time spent forming it.
    batch = 1.0
    for _ in range(20):
        form = min(c.max_queue_delay_ms, max(0.0, (most - batch) / per_instance))
        service = _service_ms(profile, c, batch, rows) + costs.outside_ms(batch)
        batch = min(float(most), max(1.0, per_instance * (service + form)))
    form = 0.0 if batch >= most else min(c.max_queue_delay_ms, 1.0 / per_instance)
    service = _service_ms(profile, c, batch, rows) + costs.outside_ms(batch)
    rho = per_instance * service / batch
    if rho >= 1.0:
        return Measurement(capacity, math.inf, capacity=capacity)
    wait = rho / (2.0 * (1.0 - rho)) * service  # M/D/1 mean wait, in batch units
    return Measurement(rate, form + service + _P99_EXP * wait, capacity=capacity,
                       p50_ms=form + service + wait)

"""The scheduler with `slo_s` (and the static delay rule) on a fake clock and scripted times."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from surge.scheduler import Request, Scheduler, SchedulerConfig, shape_key
from surge.scheduler.latency import ArrivalRate

_ids = itertools.count(1)


def req(now: float) -> Request:
    inputs = {"x": np.zeros((1, 4), np.float32)}
    return Request(next(_ids), inputs, 1, shape_key(inputs, True), now)


def measured(slo_s: float | None, delay_s: float = 0.010) -> Scheduler:
    """A scheduler whose instance computes a + b * n = 2 ms + 0.5 ms per item."""
    s = Scheduler(SchedulerConfig(max_batch_size=32, max_queue_delay_s=delay_s, slo_s=slo_s))
    for n in (1, 16):
        for _ in range(n):
            s.add(req(-10.0), -10.0)
        batch = s.next_batch(-10.0 + delay_s, 1)
        assert batch is not None
        assert batch.size == n
        s.complete(batch, {"y": np.zeros((n, 1), np.float32)}, -9.0, 0.002 + 0.0005 * n)
    assert s.fitted_time(8) == pytest.approx(0.006)
    s.arrivals = ArrivalRate()  # the measuring bursts are no traffic of the tests
    return s


def test_slo_model_dispatches_at_once_when_nothing_else_is_coming() -> None:
    s = measured(slo_s=0.050)
    for i in range(4):  # a request every 100 ms
        s.add(req(i * 0.1), i * 0.1)
        batch = s.next_batch(i * 0.1, 1)
        assert batch is not None, f"request {i} waited"
        s.complete(batch, {"y": np.zeros((1, 1), np.float32)}, i * 0.1 + 0.003, 0.0025)


def prime(s: Scheduler, until: float, gap: float = 0.00025) -> None:
    """Traffic at 1/gap requests per second has been arriving up to `until`."""
    for i in range(8, 0, -1):
        s.arrivals.arrive(until - i * gap)


def test_slo_model_waits_under_load_and_the_batch_grows_within_the_slo() -> None:
    s = measured(slo_s=0.050)
    prime(s, 0.0, gap=0.001)
    now, batch = 0.0, None
    # spread=0: the worker computes a batch, only its second slot is free
    while batch is None:  # 1000 requests/s: a batch of one (2.5 ms) cannot keep pace
        s.add(req(now), now)
        batch = s.next_batch(now, 1, spread=0)
        if batch is None:
            wakeup = s.next_wakeup(now, 1)
            assert wakeup is not None
            assert wakeup + 0.001 + (s.fitted_time(s.queued + 1) or 1.0) <= 0.040 + 1e-9
        now += 0.001
    assert batch.size == 4  # the smallest batch that keeps pace: 4 items in 4 ms
    done = batch.dispatched + (s.fitted_time(batch.size) or 1.0)
    assert done - batch.requests[0].arrival <= 0.050 * 0.8 + 1e-9


def test_slo_model_dispatches_when_waiting_more_would_pass_the_slo() -> None:
    s = measured(slo_s=0.050)
    prime(s, 0.0)
    s.add(req(0.0), 0.0)
    assert s.next_batch(0.0, 1, spread=0) is None
    prime(s, 0.030)
    s.add(req(0.030), 0.030)
    assert s.next_batch(0.030, 1, spread=0) is None  # 30 ms old, 2 items: 3 ms of work, room to wait
    prime(s, 0.0375)
    batch = s.next_batch(0.0375, 1, spread=0)  # one more arrival and its batch would pass 80% of 50 ms
    assert batch is not None
    assert batch.size == 2


def test_slo_model_gives_a_worker_with_nothing_to_do_the_queue_at_once() -> None:
    s = measured(slo_s=0.050)
    prime(s, 0.0, gap=0.001)  # a batch of one cannot keep pace at 1000/s...
    s.add(req(0.0), 0.0)
    assert s.next_batch(0.0, 2, spread=0) is None
    batch = s.next_batch(0.0, 2, spread=1)  # ...but an idle worker would only sit waiting
    assert batch is not None


def test_static_delay_is_not_paid_when_requests_come_one_at_a_time() -> None:
    s = measured(slo_s=None, delay_s=0.002)
    s.add(req(0.0), 0.0)
    assert s.next_batch(0.0, 1) is None  # no rate known yet: the delay is waited as before
    first = s.next_batch(0.002, 1)
    assert first is not None
    s.complete(first, {"y": np.zeros((1, 1), np.float32)}, 0.005, 0.0025)
    for i in range(1, 5):  # one closed-loop client: a request every 7 ms
        s.add(req(i * 0.007), i * 0.007)
        batch = s.next_batch(i * 0.007, 1)
        assert batch is not None, f"request {i} waited for the delay"
        s.complete(batch, {"y": np.zeros((1, 1), np.float32)}, i * 0.007 + 0.003, 0.0025)


def test_static_delay_is_still_waited_for_a_burst() -> None:
    s = measured(slo_s=None, delay_s=0.002)
    s.add(req(0.0), 0.0)
    s.add(req(0.0002), 0.0002)
    assert s.next_batch(0.0003, 1) is None
    assert s.next_wakeup(0.0003, 1) == pytest.approx(0.002)


@pytest.mark.parametrize(("field", "value"), [("slo_s", 0.0), ("slo_headroom", 1.5)])
def test_config_refuses_a_bad_slo(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**{field: value})  # type: ignore[arg-type]

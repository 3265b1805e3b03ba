"""Batch times learnt per instance (nodes differ): predictions and admission use each live
instance's own time, and the count of live instances follows the pool."""

from __future__ import annotations

import numpy as np
import pytest

from surge.errors import QueueFullError
from surge.scheduler import Scheduler
from surge.scheduler.estimate import InstanceTimes
from tests.unit.scheduler.test_scheduler import req, scheduler

FAST, SLOW = 0.010, 0.100


def measure(s: Scheduler, instance: int, seconds: float, now: float) -> None:
    s.add(req(now=now), now)
    batch = s.next_batch(now, 1)
    assert batch is not None
    s.complete(batch, {"y": np.zeros((batch.size, 4), np.float32)}, now + seconds,
               instance=instance)


def two_speeds(**kwargs: object) -> Scheduler:
    """Two live instances, one ten times slower than the other, each measured a few times."""
    s = scheduler(max_batch_size=1, max_queue_size=100, workers=2, **kwargs)
    for i in range(4):
        measure(s, 2, SLOW, now=float(i))  # first: a fast first sample bounds a slow one
        measure(s, 1, FAST, now=float(i) + 0.5)
    return s


def test_each_instance_keeps_its_own_time() -> None:
    s = two_speeds()
    assert s.batch_time(1, instance=1) == pytest.approx(FAST)
    assert s.batch_time(1, instance=2) == pytest.approx(SLOW)
    # Without an instance (a hang limit, a retry): the slowest live one, never a blend.
    assert s.batch_time(1) == pytest.approx(SLOW)


def test_next_batch_is_predicted_on_the_fastest_idle_instance() -> None:
    s = two_speeds()
    now = 10.0
    assert s.predicted_completion(req(now=now), now) == pytest.approx(now + FAST)
    s.add(req(now=now), now)
    assert s.next_batch(now, 2) is not None  # the pool gives it to the fast instance
    assert s.predicted_completion(req(now=now), now) == pytest.approx(now + SLOW)


def test_queue_drains_at_the_instances_combined_rate() -> None:
    s = two_speeds()
    now = 10.0
    for _ in range(21):
        s.add(req(now=now), now)
    rate = 1 / FAST + 1 / SLOW  # 110 batches/s together
    # 21 queued ahead + its own: 22 batches. One blended estimate (55 ms / 2 workers) would
    # have predicted 0.6 s and refused both.
    assert s.predicted_completion(req(now=now), now) == pytest.approx(now + 22 / rate)
    with pytest.raises(QueueFullError, match="deadline") as info:
        s.add(req(now=now, deadline=now + 0.19), now)
    assert info.value.retry_after_s == pytest.approx(21 / rate)
    assert s.add(req(now=now, deadline=now + 0.21), now).deadline == pytest.approx(now + 0.21)


def test_more_live_instances_drain_faster() -> None:
    s = scheduler(max_batch_size=1, max_queue_size=100)
    measure(s, 1, SLOW, now=0.0)
    now = 10.0
    for _ in range(9):
        s.add(req(now=now), now)
    alone = s.predicted_completion(req(now=now), now)
    s.set_workers(2)  # the pool scaled up; the new instance is not measured yet
    assert s.workers == 2
    assert s.predicted_completion(req(now=now), now) == pytest.approx(now + (alone - now) / 2)
    s.set_workers(0)  # every instance lost: predictions keep one
    assert s.workers == 1


def test_a_lost_instance_stops_counting_once_its_replacement_reports() -> None:
    s = two_speeds()
    measure(s, 3, FAST, now=20.0)  # the slow instance 2 was lost; 3 replaced it
    assert s.batch_time(1) == pytest.approx(FAST)


def test_a_new_instance_whose_first_batch_stalls_is_bounded_by_the_others() -> None:
    times = InstanceTimes(alpha=0.2, outlier_multiple=4.0, live=2)
    times.record(1, 1, FAST)
    times.record(2, 1, 6.0)  # a fresh actor stalled on its first batch
    assert times.estimate(1, instance=2) == pytest.approx(4 * FAST)
    assert times.estimates(1) == pytest.approx([FAST, 4 * FAST])

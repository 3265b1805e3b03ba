"""The batch-time estimate admission predicts with: robust to stalls, and re-measured when stale."""

from __future__ import annotations

import numpy as np
import pytest

from surge.errors import QueueFullError
from surge.scheduler import Batch, Scheduler
from surge.scheduler.estimate import BatchTimes, InstanceTimes
from tests.unit.scheduler.test_scheduler import ids, req, scheduler


def dispatch_one(s: Scheduler, rows: int, now: float, deadline: float | None = None) -> Batch:
    request = s.add(req(rows, now=now, deadline=deadline), now)
    batch = s.next_batch(now + 1.0, 1)  # past the batching delay
    assert batch is not None
    assert ids(batch) == [request.id]
    return batch


def finish(s: Scheduler, batch: Batch, seconds: float) -> None:
    s.complete(batch, {"y": np.zeros((batch.size, 4), np.float32)}, batch.dispatched + seconds)


def measure(s: Scheduler, rows: int, seconds: float, now: float) -> None:
    finish(s, dispatch_one(s, rows, now), seconds)


# -- BatchTimes ----------------------------------------------------------------------------
def test_a_sample_counts_as_at_most_the_outlier_multiple() -> None:
    times = BatchTimes(alpha=0.5, outlier_multiple=4.0)
    times.record(1, 0.050)
    times.record(1, 6.0)
    assert times.estimate(1) == pytest.approx(0.5 * 0.200 + 0.5 * 0.050)


def test_a_real_slowdown_takes_over_within_a_few_batches() -> None:
    times = BatchTimes(alpha=0.2, outlier_multiple=4.0)
    times.record(1, 0.010)
    for _ in range(8):
        times.record(1, 0.100)
    assert times.estimate(1) == pytest.approx(0.100, rel=0.25)


def test_first_sample_of_a_size_is_bounded_by_its_neighbours() -> None:
    times = BatchTimes(outlier_multiple=4.0)
    times.record(2, 0.010)
    times.record(8, 10.0)  # estimated from size 2 before: 40 ms
    assert times.estimate(8) == pytest.approx(0.160)
    times.record(16, 0.170)  # scaled from size 8: 320 ms; a faster sample is kept as is
    assert times.estimate(16) == pytest.approx(0.170)


def test_a_batch_is_never_estimated_slower_than_a_larger_one() -> None:
    times = BatchTimes(alpha=0.2, outlier_multiple=4.0)
    times.record(8, 0.0048)
    times.record(4, 0.0197)  # a size run rarely, last during a stall
    assert times.estimate(4) == pytest.approx(0.0048)
    assert times.estimate(6) == pytest.approx(0.0048)  # between two capped sizes
    assert times.estimate(2) == pytest.approx(0.0048)
    times.record(2, 0.001)
    assert times.estimate(2) == pytest.approx(0.001)  # smaller ones keep their own
    assert times.estimate(16) == pytest.approx(0.0096)  # above: scaled from the largest


def test_remeasure_replaces_the_estimate() -> None:
    times = BatchTimes(alpha=0.2)
    times.record(1, 6.0)
    times.remeasure(1, 0.052)
    assert times.estimate(1) == pytest.approx(0.052)
    assert times.fastest() == pytest.approx(0.052)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        BatchTimes(alpha=0.0)
    with pytest.raises(ValueError, match="outlier_multiple"):
        BatchTimes(outlier_multiple=0.5)


# -- a stalled batch does not rule admission -------------------------------------------------
def test_one_stalled_batch_does_not_refuse_what_the_workers_can_serve() -> None:
    s = scheduler(max_batch_size=1, max_queue_size=100)
    for i in range(5):
        measure(s, 1, 0.052, now=float(i))
    measure(s, 1, 6.024, now=10.0)  # a worker stopped for 6 s mid-batch
    assert (s.batch_time(1) or 0.0) < 0.1
    now = 20.0
    s.add(req(now=now), now)  # one request queued ahead
    s.add(req(now=now, deadline=now + 0.5), now)  # still admitted


# -- probes --------------------------------------------------------------------------------
def stale(s: Scheduler, seconds: float = 6.0) -> None:
    """Make the size-1 estimate `seconds` through genuine (if old) measurements."""
    for i in range(40):
        measure(s, 1, seconds, now=float(i))
    assert s.batch_time(1) == pytest.approx(seconds, rel=0.01)


def test_idle_model_admits_a_probe_whose_time_replaces_a_stale_estimate() -> None:
    s = scheduler(max_batch_size=1, probe_interval_s=1.0)
    stale(s)
    now = 100.0
    batch = dispatch_one(s, 1, now, deadline=now + 0.5)  # refused by the estimate alone before
    assert s.inflight == 1
    with pytest.raises(QueueFullError, match="predicted completion"):
        s.add(req(now=now, deadline=now + 0.5), now)  # one probe at a time
    finish(s, batch, 0.052)
    assert s.batch_time(1) == pytest.approx(0.052)
    for i in range(3):  # back to admitting what the deadline allows
        t = now + 1.0 + i
        assert s.add(req(now=t, deadline=t + 0.5), t).deadline == pytest.approx(t + 0.5)


def test_probes_are_rate_limited() -> None:
    s = scheduler(max_batch_size=1, probe_interval_s=1.0)
    stale(s)
    finish(s, dispatch_one(s, 1, 100.0, deadline=100.5), 5.9)  # the estimate was right
    with pytest.raises(QueueFullError):
        s.add(req(now=100.5, deadline=101.0), 100.5)
    assert s.add(req(now=101.0, deadline=101.5), 101.0).deadline == pytest.approx(101.5)


def test_no_probe_while_requests_are_queued() -> None:
    s = scheduler(max_batch_size=1)
    stale(s)
    now = 100.0
    s.add(req(now=now), now)
    with pytest.raises(QueueFullError):
        s.add(req(now=now, deadline=now + 0.5), now)


def test_queued_probe_waits_for_a_worker_until_its_deadline_passes() -> None:
    s = scheduler(max_batch_size=4, max_queue_delay_s=0.010)
    stale(s)  # size 1 measured at 6 s: a probe can never finish in time, by the estimate
    now = 100.0
    probe = s.add(req(now=now, deadline=now + 0.5), now)
    assert s.expire(now) == []  # a non-probe request would be expired at once
    assert s.next_wakeup(now, idle_workers=0) == pytest.approx(now + 0.5)
    assert s.expire(now + 0.5) == [probe]
    assert s.idle()
    assert s.add(req(now=now + 2.0, deadline=now + 2.5), now + 2.0) is not None  # a new probe


def test_failed_probe_frees_the_probe_place() -> None:
    s = scheduler(max_batch_size=1, probe_interval_s=0.0)
    stale(s)
    batch = dispatch_one(s, 1, 100.0, deadline=100.5)
    s.fail(batch)
    assert s.batch_time(1) == pytest.approx(6.0, rel=0.01)  # a failure measures nothing
    assert s.add(req(now=100.1, deadline=100.6), 100.1) is not None


# -- retry after a hang ----------------------------------------------------------------------
def test_hung_batch_goes_back_once_ahead_of_later_arrivals_and_is_not_measured() -> None:
    s = scheduler(max_batch_size=2)
    measure(s, 2, 0.050, now=0.0)
    a, b = s.add(req(), 1.0), s.add(req(), 1.0)
    batch = s.next_batch(1.0, 1)
    assert batch is not None
    later = s.add(req(now=1.5), 1.5)
    assert s.retry(batch, 3.0) == ()
    assert s.batch_time(2) == pytest.approx(0.050)
    again = s.next_batch(3.0, 1)
    assert again is not None
    assert ids(again) == [a.id, b.id]
    assert [r.retries for r in again.requests] == [1, 1]
    assert [r.id for r in s.retry(again, 6.0)] == [a.id, b.id]  # hung twice: answered
    assert s.inflight == 0
    assert [r.id for r in s.drain()] == [later.id]


def test_hung_batch_request_without_time_left_is_not_retried() -> None:
    s = scheduler(max_batch_size=2)
    measure(s, 1, 0.100, now=0.0)
    near = s.add(req(deadline=3.05), 1.0)
    far = s.add(req(deadline=9.0), 1.0)
    batch = s.next_batch(1.0, 1)
    assert batch is not None
    assert [r.id for r in s.retry(batch, 3.0)] == [near.id]  # 50 ms left, a batch takes 100
    assert s.queued == 1
    assert next(iter(s.drain())).id == far.id


def test_retries_setting_zero_never_requeues() -> None:
    s = scheduler(max_batch_size=1, retries=0)
    batch = dispatch_one(s, 1, 0.0)
    assert len(s.retry(batch, 1.0)) == 1
    assert s.idle()


def test_instance_answers_follow_every_new_batch_and_live_count() -> None:
    """`estimates` and `rate` are kept between batches: each new sample, re-measure or change
    of the live instances must still show at once."""
    times = InstanceTimes(alpha=1.0, live=2)
    times.record(0, 4, 0.010)
    assert times.estimates(4) == (0.010, 0.010)  # the unmeasured live one counts as slowest
    assert times.rate(4) == pytest.approx(200.0)
    times.record(1, 4, 0.020)
    assert times.estimates(4) == (0.010, 0.020)
    assert times.rate(4) == pytest.approx(150.0)
    times.remeasure(1, 4, 0.040)
    assert times.estimates(4) == (0.010, 0.040)
    times.live = 1  # the most recently reporting instance alone
    assert times.estimates(4) == (0.040,)
    assert times.rate(4) == pytest.approx(25.0)

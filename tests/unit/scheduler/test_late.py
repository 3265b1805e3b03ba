"""Work that would be late is never computed: requests refused at dispatch when the batch they
would join finishes past their deadline, and every deadline allowing for the front end's lag.
Pure: a fake clock (plain floats) and scripted batch times."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from surge.errors import QueueFullError
from surge.scheduler import Request, Scheduler, SchedulerConfig, shape_key
from surge.scheduler.latency import DecayingLevel
from surge.scheduler.policy import late_requests

_ids = itertools.count(1)


def req(deadline: float | None, now: float = 0.0, rows: int = 1) -> Request:
    inputs = {"x": np.zeros((rows, 4), np.float32)}
    return Request(next(_ids), inputs, rows, shape_key(inputs, True), now, deadline)


def line(size: int) -> float:
    """A batch of `size` takes 2 ms + 0.5 ms per item."""
    return 0.002 + 0.0005 * size


def measured() -> Scheduler:
    """Batches of up to 16, no delay; a batch of 1 measured 2.5 ms and one of 16, 10 ms."""
    s = Scheduler(SchedulerConfig(max_batch_size=16, max_queue_delay_s=0.0))
    for n in (1, 16):
        for _ in range(n):
            s.add(req(None, -10.0), -10.0)
        batch = s.next_batch(-10.0, 1)
        assert batch is not None
        assert batch.size == n
        s.complete(batch, {"y": np.zeros((n, 1), np.float32)}, -9.0, line(n))
    return s


# -- the policy -------------------------------------------------------------------------------
def test_a_batch_whose_requests_all_finish_in_time_loses_none() -> None:
    requests = [req(0.010) for _ in range(8)]  # 8 items: 6 ms
    assert late_requests(requests, 0.0, line) == frozenset()


def test_the_earliest_deadlines_go_until_the_rest_finish_in_time() -> None:
    urgent = [req(0.0045 + 0.0001 * i) for i in range(4)]
    relaxed = [req(0.050) for _ in range(12)]
    late = late_requests(urgent + relaxed, 0.0, line)
    # 16 items take 10 ms; dropping the four urgent ones leaves 12 items: 8 ms, all in time
    assert late == {r.id for r in urgent}
    kept = [r for r in urgent + relaxed if r.id not in late]
    assert all(r.deadline is not None and r.deadline >= line(len(kept)) for r in kept)


def test_only_as_many_go_as_needed() -> None:
    # 10 items: 7 ms. Dropping the first (5 ms) leaves 9 items (6.5 ms): the 6.6 ms one fits.
    requests = [req(0.005), req(0.0066), *(req(0.050) for _ in range(8))]
    assert late_requests(requests, 0.0, line) == {requests[0].id}


def test_the_start_delay_counts() -> None:
    requests = [req(0.010) for _ in range(4)]  # 4 ms of batch
    assert late_requests(requests, 0.005, line) == frozenset()
    assert late_requests(requests, 0.008, line) == {r.id for r in requests}


def test_no_deadline_an_exempt_probe_or_an_unknown_time_keeps_the_request() -> None:
    free, probe = req(None), req(0.001)
    assert late_requests([free, probe], 0.0, line, exempt=probe.id) == frozenset()
    assert late_requests([req(0.001)], 0.0, lambda n: None) == frozenset()


# -- the scheduler ----------------------------------------------------------------------------
def test_requests_the_batch_would_finish_too_late_for_are_refused_not_computed() -> None:
    s = measured()
    # Admitted one by one, each was predicted in time (the first four: 2.5-4 ms of work ahead,
    # deadline 5 ms); in the batch of 16 they would all have waited for its 10 ms.
    urgent = [s.add(req(0.005), 0.0) for _ in range(4)]
    relaxed = [s.add(req(0.050), 0.0) for _ in range(12)]
    assert s.expire(0.0) == []
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert [r.id for r in batch.requests] == [r.id for r in relaxed]
    assert {r.id for r in s.take_late()} == {r.id for r in urgent}
    assert s.take_late() == []  # handed over once
    assert s.queued == 0
    assert s.next_batch(0.0, 1) is None


def test_the_batch_goes_without_its_late_request() -> None:
    s = measured()
    doomed = s.add(req(0.0028), 0.0)  # 2.5 ms alone: admitted
    s.add(req(None), 0.0)  # and with it 3 ms: too late
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert batch.size == 1
    assert batch.requests[0].deadline is None
    assert [r.id for r in s.take_late()] == [doomed.id]


def test_admission_allows_for_the_front_end_lag() -> None:
    s = measured()
    s.add(req(0.015), 0.0)  # 2.5 ms of batch, 15 ms of deadline
    s.lag_s = 0.020  # the loop holds every request 20 ms on its way in and out
    with pytest.raises(QueueFullError) as refused:
        s.add(req(0.015), 0.0)
    assert refused.value.reason == "predicted_miss"


def test_expiry_and_dispatch_allow_for_the_front_end_lag() -> None:
    s = measured()
    early = s.add(req(0.012), 0.0)
    later = s.add(req(0.030), 0.0)
    s.lag_s = 0.010  # learnt after they were admitted
    assert s.expire(0.0) == [early]  # 12 ms: less than 2.5 ms of batch + 10 ms of lag
    s.lag_s = 0.028
    batch = s.next_batch(0.0, 1)  # 2.5 ms + 28 ms > 30 ms: refused, not computed
    assert batch is None
    assert s.take_late() == [later]


# -- the lag estimate -------------------------------------------------------------------------
def test_decaying_level_follows_a_lasting_lag_within_a_few_samples() -> None:
    level = DecayingLevel()
    for i in range(20):  # a saturated loop: one sample per 50 ms backlog
        level.observe(0.05 * i, 0.050)
    assert level.value(0.95) == pytest.approx(0.05, rel=0.2)


def test_decaying_level_forgets_a_single_stall() -> None:
    level = DecayingLevel()
    for i in range(100):
        level.observe(0.005 * i, 0.0002)  # a healthy loop, sampled every 5 ms
    level.observe(0.5, 0.100)  # one 100 ms stall
    assert level.value(0.5) >= 0.015  # seen at once
    for i in range(1, 201):
        level.observe(0.5 + 0.005 * i, 0.0002)
    assert level.value(1.5) < 0.001  # gone a second later
    assert DecayingLevel().value(3.0) == 0.0


def test_decaying_level_decays_with_time_alone() -> None:
    level = DecayingLevel(half_life_s=1.0)
    level.observe(0.0, 0.1)
    assert level.value(1.0) == pytest.approx(level.value(0.0) / 2)


@pytest.mark.parametrize(("rise", "fall", "half_life"), [(0.0, 0.0, 1.0), (0.1, 0.5, 1.0),
                                                        (0.5, 0.05, 0.0)])
def test_decaying_level_settings_are_checked(rise: float, fall: float, half_life: float) -> None:
    with pytest.raises(ValueError, match="rise|half_life"):
        DecayingLevel(rise, fall, half_life)

"""Triton's `timeout_action` and `allow_timeout_override` in the scheduler, on a hand-advanced
clock: a delayed request stays queued behind the requests of its level still in time and is
never dropped; `reject` answers as before; an ignored override queues at the default timeout."""

from __future__ import annotations

import numpy as np
import pytest

from surge.errors import QueueFullError
from surge.scheduler import DEFAULT_PRIORITY_LEVEL, LevelPolicy, Scheduler, SchedulerConfig
from surge.scheduler.types import Request
from tests.unit.scheduler.test_scheduler import ids, req

BULK, URGENT = 20, 1  # levels served after and before default traffic
DEFAULT = DEFAULT_PRIORITY_LEVEL


def scheduler(**kwargs: object) -> Scheduler:
    settings: dict[str, object] = {"max_batch_size": 1, "max_queue_delay_s": 0.0,
                                   "max_queue_size": 10}
    settings.update(kwargs)
    return Scheduler(SchedulerConfig(**settings))  # type: ignore[arg-type]


def served(s: Scheduler, now: float) -> list[int]:
    """Ids in the order the queue hands them out, one batch at a time."""
    order: list[int] = []
    while (batch := s.next_batch(now, idle_workers=1)) is not None:
        order += ids(batch)
    return order


def test_a_request_past_its_deadline_is_kept_behind_the_ones_in_time() -> None:
    s = scheduler(timeout_action="delay")
    late = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    in_time = s.add(req(priority=DEFAULT, deadline=5.0), 0.0)
    assert s.expire(0.02) == []  # not answered: kept
    assert s.queued == 2
    assert served(s, 0.02) == [in_time.id, late.id]


def test_a_delayed_request_is_never_dropped_however_long_it_waits() -> None:
    s = scheduler(timeout_action="delay")
    late = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    for now in (0.02, 1.0, 60.0, 3600.0):
        assert s.expire(now) == []
        assert s.next_wakeup(now, idle_workers=0) is None  # no deadline left to wake for
    assert served(s, 3600.0) == [late.id]


def test_reject_still_answers_a_passed_deadline() -> None:
    for s in (scheduler(), scheduler(timeout_action="reject")):
        late = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
        assert s.expire(0.02) == [late]
        assert s.queued == 0


def test_a_delayed_request_goes_after_its_level_only_not_after_later_levels() -> None:
    s = scheduler(timeout_action="delay")
    bulk = s.add(req(priority=BULK), 0.0)
    late = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    fresh = s.add(req(priority=DEFAULT, deadline=9.0), 0.01)
    urgent = s.add(req(priority=URGENT), 0.01)
    s.expire(0.02)
    assert served(s, 0.02) == [urgent.id, fresh.id, late.id, bulk.id]


def test_delayed_requests_keep_their_arrival_order_among_themselves() -> None:
    s = scheduler(timeout_action="delay")
    first = s.add(req(priority=DEFAULT, deadline=0.02), 0.0)
    second = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    s.expire(0.03)
    assert served(s, 0.03) == [second.id, first.id]  # delayed in the order deadlines passed


def test_a_delayed_request_fills_a_batch_after_the_ones_in_time() -> None:
    s = scheduler(timeout_action="delay", max_batch_size=4)
    late = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    s.expire(0.02)
    in_time = [s.add(req(priority=DEFAULT, deadline=9.0), 0.02) for _ in range(2)]
    batch = s.next_batch(0.02, idle_workers=1)
    assert batch is not None
    assert ids(batch) == [r.id for r in in_time] + [late.id]


def test_each_level_may_set_its_own_action() -> None:
    s = scheduler(priorities={BULK: LevelPolicy(timeout_action="delay"),
                              URGENT: LevelPolicy(timeout_action="reject")},
                  timeout_action="delay")
    bulk = s.add(req(priority=BULK, deadline=0.01), 0.0)
    urgent = s.add(req(priority=URGENT, deadline=0.01), 0.0)
    default = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)  # no policy: the model's
    assert s.expire(0.02) == [urgent]
    assert served(s, 0.02) == [default.id, bulk.id]

    s = scheduler(priorities={BULK: LevelPolicy(timeout_action="delay")})
    bulk = s.add(req(priority=BULK, deadline=0.01), 0.0)
    default = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    assert s.expire(0.02) == [default]
    assert served(s, 0.02) == [bulk.id]


def test_a_level_bound_still_holds_its_delayed_requests() -> None:
    s = scheduler(priorities={BULK: LevelPolicy(max_queue_size=2, name="priority 20")},
                  timeout_action="delay")
    for _ in range(2):
        s.add(req(priority=BULK, deadline=0.01), 0.0)
    assert s.expire(0.02) == []
    with pytest.raises(QueueFullError, match=r"queue full for priority 20 \(2 requests"):
        s.add(req(priority=BULK), 0.02)
    s.add(req(priority=DEFAULT), 0.02)  # other levels keep their room


def test_a_delayed_request_sent_back_stays_behind_the_ones_in_time() -> None:
    s = scheduler(timeout_action="delay", max_batch_size=2)
    late = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    s.expire(0.02)
    batch = s.next_batch(0.02, idle_workers=1)
    assert batch is not None
    assert ids(batch) == [late.id]
    fresh = s.add(req(priority=DEFAULT, deadline=9.0), 0.03)
    s.requeue(batch)  # no worker started it
    again = s.next_batch(0.04, idle_workers=1)
    assert again is not None
    assert ids(again) == [fresh.id, late.id]
    assert s.retry(again, 0.05) == ()  # a hung worker: both go again, the late one too
    assert served(s, 0.05) == [fresh.id, late.id]


def _measure(s: Scheduler, size: int, seconds: float, now: float) -> None:
    """One batch of `size` rows computed in `seconds` (as the latency probe is, unqueued)."""
    batch = s.batch_of((req(size),), now)
    s.complete(batch, {"y": np.zeros((size, 4), np.float32)}, now + seconds, seconds)


def _late_at_dispatch(action: str) -> tuple[Scheduler, Request, list[Request]]:
    """A request admitted on the time of a batch of 1 (10 ms), then joined by three more: a
    batch of 4 (100 ms) would answer it past its 50 ms deadline."""
    s = scheduler(timeout_action=action, max_batch_size=4, max_queue_delay_s=1.0)
    _measure(s, 1, 0.01, 0.0)
    _measure(s, 4, 0.1, 1.0)
    tight = s.add(req(priority=DEFAULT, deadline=2.05), 2.0)
    others = [s.add(req(priority=DEFAULT), 2.0) for _ in range(3)]
    return s, tight, others


def test_a_request_its_batch_would_answer_late_is_delayed_not_refused() -> None:
    s, tight, others = _late_at_dispatch("delay")
    batch = s.next_batch(2.0, idle_workers=1)
    assert batch is not None
    assert ids(batch) == [r.id for r in others]
    assert s.take_late() == []
    assert s.queued == 1
    s.complete(batch, {"y": np.zeros((3, 4), np.float32)}, 2.1, 0.1)
    assert s.expire(2.1) == []
    assert served(s, 2.1) == [tight.id]


def test_reject_still_refuses_a_request_its_batch_would_answer_late() -> None:
    s, tight, others = _late_at_dispatch("reject")
    batch = s.next_batch(2.0, idle_workers=1)
    assert batch is not None
    assert ids(batch) == [r.id for r in others]
    assert s.take_late() == [tight]
    assert s.queued == 0


def _backlog(action: str) -> Scheduler:
    """Batches of 1 measured at 100 ms, one batch in flight (never answered: the worker stays
    busy) and five requests of the default level queued past their deadline at 1.75."""
    s = scheduler(timeout_action=action, max_queue_size=20)
    _measure(s, 1, 0.1, 0.0)
    s.add(req(priority=DEFAULT), 1.0)
    assert s.next_batch(1.0, idle_workers=1) is not None
    for _ in range(5):
        s.add(req(priority=DEFAULT, deadline=1.7), 1.0)
    assert s.expire(1.75) == []
    return s


def test_admission_counts_no_delayed_request_ahead_of_one_in_time() -> None:
    s = _backlog("delay")
    assert s.queued == 5
    # Served before the five delayed ones: the busy batch's rest, then its own 100 ms.
    fresh = s.add(req(priority=DEFAULT, deadline=1.75 + 0.25), 1.75)
    assert served(s, 1.75)[0] == fresh.id


def test_a_request_predicted_to_miss_is_still_refused_at_arrival_under_delay() -> None:
    s = _backlog("delay")
    with pytest.raises(QueueFullError, match="cannot meet the deadline") as info:
        s.add(req(priority=BULK, deadline=1.75 + 0.25), 1.75)  # behind the five: 600 ms
    assert info.value.reason == "predicted_miss"
    assert s.queued == 5


def test_override_false_queues_at_the_default_timeout_despite_a_longer_own_one() -> None:
    s = scheduler(default_timeout_s=0.05, allow_timeout_override=False)
    own = s.add(req(priority=DEFAULT, deadline=10.0), 0.0)
    assert own.deadline == pytest.approx(0.05)
    assert s.expire(0.06) == [own]

    s = scheduler(default_timeout_s=0.05)  # the override allowed: its own timeout wins
    own = s.add(req(priority=DEFAULT, deadline=10.0), 0.0)
    assert own.deadline == 10.0
    assert s.expire(0.06) == []


def test_override_false_without_a_default_timeout_leaves_no_deadline() -> None:
    s = scheduler(allow_timeout_override=False)
    own = s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    assert own.deadline is None
    assert s.expire(5.0) == []
    assert served(s, 5.0) == [own.id]


def test_each_level_may_set_its_own_override() -> None:
    s = scheduler(default_timeout_s=0.05, priorities={
        BULK: LevelPolicy(allow_timeout_override=False, default_timeout_s=1.0),
        URGENT: LevelPolicy(allow_timeout_override=True)}, allow_timeout_override=False)
    bulk = s.add(req(priority=BULK, deadline=30.0), 0.0)
    urgent = s.add(req(priority=URGENT, deadline=30.0), 0.0)
    default = s.add(req(priority=DEFAULT, deadline=30.0), 0.0)
    assert (bulk.deadline, urgent.deadline, default.deadline) == (1.0, 30.0, 0.05)


def test_a_bad_action_is_refused_by_the_scheduler_config() -> None:
    with pytest.raises(ValueError, match="timeout_action must be one of .* got 'drop'"):
        SchedulerConfig(timeout_action="drop")
    with pytest.raises(ValueError, match="priority 3: timeout_action must be one of"):
        LevelPolicy(timeout_action="DELAY", name="priority 3")  # the config lowers its case


def test_a_refusal_on_the_default_timeout_says_the_own_one_is_ignored() -> None:
    s = scheduler(default_timeout_s=0.05, allow_timeout_override=False)
    _measure(s, 1, 0.1, 0.0)
    s.add(req(priority=DEFAULT), 1.0)  # queued: no probe is admitted
    with pytest.raises(QueueFullError, match=r"queue\.default_timeout_ms; a `timeout` "
                       r"parameter is ignored here: allow_timeout_override is false\)$"):
        s.add(req(priority=DEFAULT, deadline=60.0), 1.0)

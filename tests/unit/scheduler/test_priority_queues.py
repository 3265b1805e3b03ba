"""Per-priority queue policy (`queue.priorities`): each level's own bound on its queued
requests and its own default deadline, inside the model's whole-queue bound."""

from __future__ import annotations

import numpy as np
import pytest

from surge.engine.ladder import rung_config
from surge.engine.served import scheduler_config
from surge.errors import QueueFullError
from surge.repository.config import ORIGINAL, parse_config
from surge.scheduler import DEFAULT_PRIORITY_LEVEL, LevelPolicy, Scheduler, SchedulerConfig
from tests.unit.scheduler.test_scheduler import ids, req

BULK, URGENT = 20, 1  # scheduler levels: bulk served after default traffic, urgent before


def scheduler(levels: dict[int, LevelPolicy], **kwargs: object) -> Scheduler:
    settings: dict[str, object] = {"max_batch_size": 4, "max_queue_delay_s": 0.0,
                                   "max_queue_size": 10, "priorities": levels}
    settings.update(kwargs)
    return Scheduler(SchedulerConfig(**settings))  # type: ignore[arg-type]


def test_a_full_level_refuses_its_own_requests_only() -> None:
    s = scheduler({BULK: LevelPolicy(max_queue_size=2, name="priority 20")})
    s.add(req(priority=BULK), 0.0)
    s.add(req(priority=BULK), 0.0)
    with pytest.raises(QueueFullError, match=r"queue full for priority 20 \(2 requests") as info:
        s.add(req(priority=BULK), 0.0)
    assert info.value.reason == "queue_full"  # counted as every full queue is
    assert info.value.retry_after_s > 0
    s.add(req(priority=URGENT), 0.0)  # other levels keep their room
    s.add(req(priority=DEFAULT_PRIORITY_LEVEL), 0.0)
    assert s.queued == 4


def test_the_model_max_size_still_bounds_every_level_together() -> None:
    s = scheduler({BULK: LevelPolicy(max_queue_size=3)}, max_queue_size=3)
    s.add(req(priority=BULK), 0.0)
    s.add(req(priority=BULK), 0.0)
    s.add(req(priority=URGENT), 0.0)
    with pytest.raises(QueueFullError, match=r"queue full \(3 requests waiting\)"):
        s.add(req(priority=URGENT), 0.0)


def test_a_level_gets_room_again_as_its_requests_leave() -> None:
    s = scheduler({BULK: LevelPolicy(max_queue_size=2)})
    first = s.add(req(priority=BULK), 0.0)
    s.add(req(priority=BULK), 0.0)
    assert s.cancel(first.id) is first
    third = s.add(req(priority=BULK), 0.0)
    batch = s.next_batch(0.0, idle_workers=1)
    assert batch is not None
    assert third.id in ids(batch)
    s.add(req(priority=BULK), 0.0)
    s.add(req(priority=BULK), 0.0)
    with pytest.raises(QueueFullError, match="priority level 20"):  # unnamed: its level
        s.add(req(priority=BULK), 0.0)


def test_accepted_requests_sent_back_are_kept_past_their_level_bound() -> None:
    s = scheduler({BULK: LevelPolicy(max_queue_size=2)})
    s.add(req(priority=BULK), 0.0)
    s.add(req(priority=BULK), 0.0)
    batch = s.next_batch(0.0, idle_workers=1)
    assert batch is not None
    assert len(batch.requests) == 2
    s.add(req(priority=BULK), 0.0)
    s.add(req(priority=BULK), 0.0)
    s.requeue(batch)  # the worker never started it: accepted work is not dropped
    assert s.queued == 4
    with pytest.raises(QueueFullError, match=r"\(4 requests of that priority waiting; its "
                       r"max_size is 2\)"):  # the bound named, not taken for the count
        s.add(req(priority=BULK), 0.0)


def test_a_level_full_at_one_request_says_so_in_the_singular() -> None:
    s = scheduler({BULK: LevelPolicy(max_queue_size=1, name="priority 20")})
    s.add(req(priority=BULK), 0.0)
    with pytest.raises(QueueFullError, match=r"^queue full for priority 20 \(1 request of "
                       r"that priority waiting; its max_size is 1\); requests of other "
                       "priorities are still taken$"):
        s.add(req(priority=BULK), 0.0)


def test_a_full_level_hints_the_wait_for_its_own_work_ahead() -> None:
    s = scheduler({BULK: LevelPolicy(max_queue_size=4)}, max_queue_size=100)
    done = s.add(req(4), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert ids(batch) == [done.id]
    s.complete(batch, {"y": np.zeros((4, 4), np.float32)}, 0.1)  # a full batch takes 100 ms
    for _ in range(4):
        s.add(req(priority=BULK, now=1.0), 1.0)
    for _ in range(8):  # work after the bulk level: no wait of it
        s.add(req(priority=BULK + 5, now=1.0), 1.0)
    with pytest.raises(QueueFullError) as info:
        s.add(req(priority=BULK, now=1.0), 1.0)
    assert info.value.retry_after_s == pytest.approx(0.100)


def test_a_level_default_timeout_replaces_the_model_one_for_that_level() -> None:
    s = scheduler({BULK: LevelPolicy(default_timeout_s=0.5)}, default_timeout_s=2.0)
    assert s.add(req(priority=BULK, now=1.0), 1.0).deadline == pytest.approx(1.5)
    assert s.add(req(priority=URGENT, now=1.0), 1.0).deadline == pytest.approx(3.0)
    own = s.add(req(priority=BULK, now=1.0, deadline=9.0), 1.0)
    assert own.deadline == 9.0  # a request's own timeout wins


def test_a_level_default_timeout_applies_without_a_model_one() -> None:
    s = scheduler({BULK: LevelPolicy(default_timeout_s=0.5)})
    assert s.add(req(priority=BULK), 0.0).deadline == pytest.approx(0.5)
    assert s.add(req(priority=URGENT), 0.0).deadline is None


def test_a_starved_level_with_a_timeout_is_answered_not_kept_for_ever() -> None:
    s = scheduler({BULK: LevelPolicy(default_timeout_s=1.0)}, max_queue_size=100)
    bulk = s.add(req(priority=BULK), 0.0)
    expired = []
    for step in range(30):  # urgent full batches keep the one worker busy every 100 ms
        now = step * 0.1
        expired += s.expire(now)
        for _ in range(4):
            s.add(req(priority=URGENT, now=now), now)
        batch = s.next_batch(now, 1)
        assert batch is not None
        assert bulk.id not in ids(batch)
        s.complete(batch, {"y": np.zeros((batch.size, 4), np.float32)}, now + 0.1)
    assert expired == [bulk]


@pytest.mark.parametrize("policy", [{"max_queue_size": 0}, {"default_timeout_s": 0.0},
                                    {"default_timeout_s": -1.0}])
def test_a_level_policy_out_of_range_is_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="priority 3"):
        LevelPolicy(name="priority 3", **policy)  # type: ignore[arg-type]


def test_the_model_config_maps_v2_levels_to_scheduler_levels() -> None:
    config = parse_config({"queue": {"max_size": 50, "default_timeout_ms": 2000, "priorities": {
        0: {"max_size": 40}, 1: {"default_timeout_ms": 50}, 9: {"max_size": 5}}}}, "m")
    levels = scheduler_config(config, 1).priorities
    assert levels == {
        DEFAULT_PRIORITY_LEVEL: LevelPolicy(40, None, "priority 0"),  # V2 0: the default level
        1: LevelPolicy(None, 0.05, "priority 1"),
        9: LevelPolicy(5, None, "priority 9"),
    }
    assert scheduler_config(parse_config({}, "m"), 1).priorities == {}


def test_every_rung_of_a_ladder_takes_the_level_policies() -> None:
    config = parse_config({"slo_p99_ms": 50, "max_accuracy_drop": 1,
                           "ladder": [ORIGINAL, "int8"], "ladder_accuracy": {ORIGINAL: 90,
                                                                              "int8": 89.5},
                           "queue": {"priorities": {"2": {"max_size": 3}}}}, "m")
    for rung in config.ladder:
        levels = scheduler_config(rung_config(config, rung), 1).priorities
        assert levels == {2: LevelPolicy(3, None, "priority 2")}


def _measured(s: Scheduler) -> None:
    """A full batch measured at 100 ms, and a request queued (no probe is admitted then)."""
    done = s.add(req(4), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert ids(batch) == [done.id]
    s.complete(batch, {"y": np.zeros((4, 4), np.float32)}, 0.1)
    s.add(req(priority=URGENT, now=1.0), 1.0)


def test_a_level_timeout_shorter_than_a_batch_is_refused_naming_the_level() -> None:
    s = scheduler({BULK: LevelPolicy(default_timeout_s=0.01, name="priority 20")},
                  default_timeout_s=0.02, max_queue_size=100)
    _measured(s)
    with pytest.raises(QueueFullError, match=r"deadline in 10\.0 ms \(the default timeout of "
                       r"priority 20; a `timeout` parameter sets another\)$") as info:
        s.add(req(priority=BULK, now=1.0), 1.0)
    assert info.value.reason == "predicted_miss"
    with pytest.raises(QueueFullError, match=r"deadline in 20\.0 ms \(the model's "
                       r"queue\.default_timeout_ms; a `timeout` parameter sets another\)$"):
        s.add(req(now=1.0), 1.0)
    with pytest.raises(QueueFullError, match=r"deadline in 30\.0 ms$"):  # the client's own
        s.add(req(priority=BULK, now=1.0, deadline=1.03), 1.0)

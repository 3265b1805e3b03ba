"""Per-level counts under every way a request leaves the queue: dispatched and answered,
expired, refused late at dispatch, cancelled, sent back (a batch no worker started, a hung
worker's batch, its client gone or not), failed, drained. Seeded random runs on a hand-moved
clock: a count that drifted up would fill its level for good, one that drifted down would let
the level overflow its bound."""

from __future__ import annotations

import contextlib
import random
from collections import Counter

import numpy as np
import pytest

from surge.errors import QueueFullError
from surge.scheduler import Batch, LevelPolicy, Scheduler, SchedulerConfig
from tests.unit.scheduler.test_scheduler import req

BOUNDS = {1: 2, 8: 3, 20: 2}  # level -> its max_size; level 3 has none
LEVELS = {1: LevelPolicy(2, 0.05), 8: LevelPolicy(3), 20: LevelPolicy(2, 0.2),
          3: LevelPolicy(None, 0.1)}


def _scheduler() -> Scheduler:
    return Scheduler(SchedulerConfig(max_batch_size=4, max_queue_delay_s=0.001, max_queue_size=30,
                                     workers=2, priorities=LEVELS))


def _check_counts(s: Scheduler) -> None:
    """Each level's count is what is queued at it, rows included."""
    queued = list(s._live.values())
    by_level = Counter(r.priority for r in queued)
    for level in (*LEVELS, 9):
        assert s._levels.waiting(level) == by_level[level], level
        assert s._levels.rows(upto=level) == sum(r.batch_size for r in queued
                                                  if r.priority <= level)


def _add(s: Scheduler, rng: random.Random, now: float) -> None:
    priority = rng.choice([1, 3, 8, 9, 20])
    deadline = now + rng.uniform(0.0, 0.3) if rng.random() < 0.3 else None
    with contextlib.suppress(QueueFullError):  # refusals are one of the paths
        s.add(req(rng.randint(1, 4), now=now, priority=priority, deadline=deadline,
                  features=rng.choice([4, 5])), now)


def _dispatch(s: Scheduler, inflight: list[Batch], now: float) -> None:
    s.expire(now)
    while len(inflight) < 2 and (batch := s.next_batch(now, 2 - len(inflight))) is not None:
        inflight.append(batch)
    s.take_late()


def _finish(s: Scheduler, rng: random.Random, inflight: list[Batch], now: float) -> None:
    batch = inflight.pop(rng.randrange(len(inflight)))
    gone = {r.id for r in batch.requests if rng.random() < 0.3}  # their clients left
    awaited = {r.id for r in batch.requests} - gone
    path = rng.random()
    if path < 0.5:
        s.complete(batch, {"y": np.zeros((batch.size, 4), np.float32)}, now)
    elif path < 0.65:
        s.fail(batch)
    elif path < 0.85:
        s.retry(batch, now, awaited=awaited if rng.random() < 0.5 else None)
    else:
        s.requeue(batch, awaited=awaited if rng.random() < 0.5 else None)


def _step(s: Scheduler, rng: random.Random, inflight: list[Batch], now: float) -> None:
    op = rng.random()
    if op < 0.4:
        _add(s, rng, now)
    elif op < 0.5 and s.queued:
        s.cancel(rng.choice(list(s._live)))
    elif op < 0.7:
        _dispatch(s, inflight, now)
    elif inflight:
        _finish(s, rng, inflight, now)


@pytest.mark.parametrize("seed", range(20))
def test_level_counts_follow_every_way_out_and_return_to_zero(seed: int) -> None:
    rng = random.Random(seed)
    s, inflight, now = _scheduler(), [], 0.0
    for _ in range(400):
        now += rng.uniform(0.0, 0.02)
        _step(s, rng, inflight, now)
        _check_counts(s)
    for batch in inflight:
        s.fail(batch)
    s.expire(now + 10.0)
    s.drain()
    _check_counts(s)
    assert s.queued == 0
    assert s._levels.rows() == 0
    later = now + 20.0
    for level, bound in BOUNDS.items():  # each level has its whole room again, no more
        for _ in range(bound):
            s.add(req(now=later, priority=level, deadline=later + 60.0), later)
        with pytest.raises(QueueFullError, match="queue full for priority level"):
            s.add(req(now=later, priority=level, deadline=later + 60.0), later)

"""`timeout_action: delay` on the scheduler's less travelled paths: a hung worker's batch whose
deadline passed while it computed, a delayed request left waiting behind a steady stream of
requests in time, and a whole queue passing its deadline at once."""

from __future__ import annotations

import asyncio
import gc
import heapq
import weakref
from pathlib import Path

import numpy as np
import pytest

from surge.errors import WorkerCrashedError
from surge.scheduler import DEFAULT_PRIORITY_LEVEL, Scheduler, SchedulerConfig
from tests.unit.engine.fakes import serving, settle, values
from tests.unit.scheduler.test_scheduler import ids, req

DEFAULT = DEFAULT_PRIORITY_LEVEL
OUT = {"y": np.zeros((1, 4), np.float32)}


def scheduler(action: str) -> Scheduler:
    return Scheduler(SchedulerConfig(max_batch_size=1, max_queue_delay_s=0.0,
                                     timeout_action=action))


def _hung_past_its_deadline(s: Scheduler) -> tuple[int, tuple[int, ...]]:
    """A request dispatched in time whose worker hangs once its deadline left no time for a
    batch (one measured at 0.1 s); its id and the ids `retry` hands back to fail."""
    s.add(req(priority=DEFAULT), 0.0)
    first = s.next_batch(0.0, 1)
    assert first is not None
    s.complete(first, OUT, 0.1)
    request = s.add(req(priority=DEFAULT, deadline=1.15), 1.0)
    batch = s.next_batch(1.0, 1)
    assert batch is not None
    assert ids(batch) == [request.id]
    return request.id, tuple(r.id for r in s.retry(batch, 1.1))


def test_a_hung_request_past_its_deadline_goes_back_delayed_not_failed() -> None:
    s = scheduler("delay")
    request_id, failed = _hung_past_its_deadline(s)
    assert failed == ()
    assert s.expire(5.0) == []  # no deadline left to answer it for
    batch = s.next_batch(5.0, 1)
    assert batch is not None
    assert ids(batch) == [request_id]
    (retried,) = batch.requests
    assert (retried.delayed, retried.deadline, retried.retries) == (True, None, 1)


def test_reject_still_fails_a_hung_request_its_deadline_leaves_no_time_for() -> None:
    s = scheduler("reject")
    request_id, failed = _hung_past_its_deadline(s)
    assert failed == (request_id,)
    assert s.queued == 0


def test_a_delayed_hung_request_is_answered_through_the_driver(tmp_path: Path) -> None:
    async def body() -> None:
        config = "max_batch_size: 1\nqueue: {timeout_action: delay}\n"
        async with serving(tmp_path, config, depth=1) as s:
            (late,) = await s.infer(2, timeout_us=1000)
            await s.tick(0.002)  # its deadline passed while it computed
            s.pool.hang()
            await settle()
            assert not late.done()  # not failed: queued again, delayed
            s.pool.restart()
            await settle()
            assert [values(b) for b in s.pool.dispatched] == [[2], [2]]
            s.pool.finish()
            assert float((await late)["y"][0, 0]) == 5.0

    asyncio.run(body())


def test_a_hung_request_without_retries_left_still_fails_under_delay(tmp_path: Path) -> None:
    async def body() -> None:
        config = "max_batch_size: 1\nqueue: {timeout_action: delay}\n"
        async with serving(tmp_path, config, depth=1) as s:
            (late,) = await s.infer(2, timeout_us=1000)
            await s.tick(0.002)
            s.pool.hang()
            s.pool.restart()
            await settle()
            s.pool.hang()  # the retry hangs too: nothing is queued for ever
            with pytest.raises(WorkerCrashedError, match="hung on the retry too"):
                await late

    asyncio.run(body())


def test_a_starved_delayed_request_keeps_no_served_request_alive() -> None:
    """Requests served behind a delayed one that keeps waiting are freed, inputs and all."""
    s = scheduler("delay")
    s.add(req(priority=DEFAULT, deadline=0.01), 0.0)
    assert s.expire(0.02) == []
    served: list[weakref.ref[object]] = []
    now = 0.02
    for _ in range(500):
        now += 0.001
        request = s.add(req(priority=DEFAULT, deadline=now + 5.0), now)
        served.append(weakref.ref(request.inputs["x"]))
        del request
        batch = s.next_batch(now, 1)
        assert batch is not None
        assert not batch.requests[0].delayed  # in time goes first
        s.complete(batch, OUT, now)
        del batch
    gc.collect()
    assert sum(ref() is not None for ref in served) <= 40
    assert s.queued == 1


@pytest.mark.parametrize("action", ["reject", "delay"])
def test_a_whole_queue_passing_its_deadline_rebuilds_its_heap_once(
        action: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a request, the rebuilds made expiry quadratic in the queue: 8,000 requests
    passing one deadline held the event loop for seconds."""
    s = Scheduler(SchedulerConfig(max_batch_size=8, max_queue_delay_s=0.01,
                                  max_queue_size=1000, timeout_action=action))
    for _ in range(500):
        s.add(req(priority=DEFAULT, deadline=1.0), 0.0)
    rebuilds: list[int] = []
    heapify = heapq.heapify
    monkeypatch.setattr(heapq, "heapify", lambda heap: (rebuilds.append(len(heap)),
                                                         heapify(heap))[1])
    expired = s.expire(2.0)
    assert len(rebuilds) <= 1
    assert (len(expired), s.queued) == ((500, 0) if action == "reject" else (0, 500))
    assert len(s.drain()) == (0 if action == "reject" else 500)
    assert s.queued == 0
    assert len(rebuilds) <= 2  # the drain rebuilds it once too

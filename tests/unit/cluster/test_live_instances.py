"""The served model predicts with the instances its pool has live: a pool that scales up or
down changes the scheduler's count, and each result's instance keys its batch time."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest

from surge.workers.messages import BatchDone
from surge.workers.pool import BatchResult
from tests.unit.engine.fakes import FakePool, serving, settle
from tests.unit.engine.test_driver import run

TWO = "max_batch_size: 1\ninstances: 2\n"


def grow(pool: FakePool) -> None:
    """One more instance joins (a Ray pool scaling up) and becomes ready."""
    pool.held.append(deque())
    pool.alive.append(False)
    pool.restart(len(pool.held) - 1)


def test_a_scaled_up_pool_raises_the_worker_count(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, TWO) as s:
            assert s.model.scheduler.workers == 2
            grow(s.pool)
            await settle()
            assert s.model.scheduler.workers == 3
            s.pool.crash(2)  # a lost instance stops counting
            assert s.model.scheduler.workers == 2
            s.pool.held.pop(), s.pool.alive.pop()  # scaled down by one more
            s.pool.held.pop(), s.pool.alive.pop()
            await s.tick()
            assert s.model.scheduler.workers == 1

    run(body())


def test_each_result_teaches_the_time_of_the_instance_that_computed_it(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, TWO) as s:
            tasks = await s.infer(1, 2)
            for index, (batch, seconds) in enumerate(zip(s.pool.dispatched, (0.1, 0.01),
                                                         strict=True)):
                s.pool.held[index].popleft()
                x = batch.requests[0].inputs["x"]
                s.model.on_done(batch, {"y": 2 * x + 1}, None,
                                BatchResult(BatchDone(batch.id), seconds, instance=7 + index))
            await settle()
            assert all(t.done() for t in tasks)
            scheduler = s.model.scheduler
            assert scheduler.batch_time(1, instance=7) == pytest.approx(0.1)
            assert scheduler.batch_time(1, instance=8) == pytest.approx(0.01)
            # Both idle: the next request is predicted on the fast one.
            assert np.isclose(scheduler.predicted_completion(
                s.model.make_request({"x": np.ones((1, 4), np.float32)}, None, 0, None, ""),
                s.clock()) - s.clock(), 0.01)

    run(body())

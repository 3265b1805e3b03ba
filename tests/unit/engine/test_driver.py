"""The driver of a served model (batching, crashes, cancel, drain, deadlines) on a scripted pool.

Requests go in through `Engine.infer`, as the front ends send them; the pool and the clock are
fakes, so every step is decided by the test and nothing depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from surge.errors import (
    DeadlineExceededError,
    ModelNotReadyError,
    QueueFullError,
    WorkerCrashedError,
)
from tests.unit.engine.fakes import serving, settle, values

T = TypeVar("T")
BATCHING = "max_batch_size: 4\nbatching: {max_queue_delay_ms: 2}\n"
PAIRS = "max_batch_size: 2\nbatching: {max_queue_delay_ms: 2}\n"
SINGLE = "max_batch_size: 1\n"


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def assert_answers(results: list[dict[str, np.ndarray]], sent: list[float]) -> None:
    """Each request got its own rows back, computed (y = 2x + 1)."""
    assert len(results) == len(sent)
    for value, out in zip(sent, results, strict=True):
        np.testing.assert_array_equal(out["y"], np.full_like(out["y"], 2 * value + 1))


# -- batching --------------------------------------------------------------------------------
def test_a_full_batch_goes_at_once_and_a_partial_one_after_the_delay(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, BATCHING) as s:
            first = await s.infer(1, 2, 3)
            assert s.pool.dispatched == []  # 3 of 4 rows: waits for more, or for the delay
            first += await s.infer(4)
            assert [values(b) for b in s.pool.dispatched] == [[1, 2, 3, 4]]
            later = await s.infer(5, 6)
            await s.tick(0.001)
            assert len(s.pool.dispatched) == 1
            await s.tick(0.0015)  # the oldest has waited past max_queue_delay_ms
            assert [values(b) for b in s.pool.dispatched] == [[1, 2, 3, 4], [5, 6]]
            s.pool.finish()
            s.pool.finish()
            assert_answers(await asyncio.gather(*first, *later), [1, 2, 3, 4, 5, 6])

    run(body())


def test_rows_of_several_row_requests_are_split_back(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, BATCHING) as s:
            tasks = [*await s.infer(1, rows=3), *await s.infer(2), *await s.infer(3, rows=2)]
            await s.tick(0.002)
            # 3 + 1 rows fill the batch; the 2-row request does not fit and waits.
            assert [b.size for b in s.pool.dispatched] == [4, 2]
            s.pool.finish()
            s.pool.finish()
            results = await asyncio.gather(*tasks)
            assert [r["y"].shape[0] for r in results] == [3, 1, 2]
            assert_answers(results, [1, 2, 3])

    run(body())


# -- crashes ---------------------------------------------------------------------------------
def test_a_crash_fails_only_the_computing_batch_and_requeues_the_waiting_one(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, PAIRS) as s:
            computing = await s.infer(1, 2)
            waiting = await s.infer(3, 4)  # in the instance's second slot, never started
            queued = await s.infer(5)  # the instance is full
            assert [values(b) for b in s.pool.dispatched] == [[1, 2], [3, 4]]
            s.pool.crash()
            await settle()
            for task in computing:
                with pytest.raises(WorkerCrashedError):
                    await task
            assert not any(task.done() for task in [*waiting, *queued])
            await s.tick(0.01)
            assert len(s.pool.dispatched) == 2  # no live instance: nothing handed out
            s.pool.restart()
            await settle()
            # The requeued batch goes first, ahead of the request queued after it.
            assert [values(b) for b in s.pool.dispatched[2:]] == [[3, 4], [5]]
            s.pool.finish()
            s.pool.finish()
            assert_answers(await asyncio.gather(*waiting, *queued), [3, 4, 5])
            restarts = s.engine.metrics.worker_restarts.labels("m")._value.get()
            assert restarts == 1
            stats = s.engine.stats("m")
            assert (stats.fail[0], stats.success[0], stats.inference_count) == (2, 3, 3)

    run(body())


def test_a_runner_error_fails_that_batch_and_the_model_serves_on(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, SINGLE) as s:
            failed, served = await s.infer(1, 2)
            s.pool.fail(message="bad rows")
            await settle()
            with pytest.raises(RuntimeError, match="bad rows"):
                await failed
            s.pool.finish()
            assert_answers([await served], [2])

    run(body())


# -- cancellation ----------------------------------------------------------------------------
def test_a_request_whose_client_left_is_never_computed(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, SINGLE, depth=1) as s:
            busy, victim, patient = await s.infer(1, 2, 3)
            assert [values(b) for b in s.pool.dispatched] == [[1]]
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            assert s.model.scheduler.queued == 1
            s.pool.finish()
            await settle()
            s.pool.finish()
            assert_answers(await asyncio.gather(busy, patient), [1, 3])
            assert [values(b) for b in s.pool.dispatched] == [[1], [3]]
            assert s.engine.stats("m").inference_count == 2
            assert not s.model._futures

    run(body())


def test_a_request_cancelled_while_computing_is_dropped_and_the_others_answered(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, BATCHING) as s:
            kept_a, victim, kept_b, kept_c = await s.infer(1, 2, 3, 4)
            assert [values(b) for b in s.pool.dispatched] == [[1, 2, 3, 4]]
            victim.cancel()
            await settle()
            s.pool.finish()
            assert_answers(await asyncio.gather(kept_a, kept_b, kept_c), [1, 3, 4])
            assert victim.cancelled()
            assert not s.model._futures

    run(body())


# -- stop ------------------------------------------------------------------------------------
def test_stop_lets_accepted_requests_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, SINGLE, depth=1) as s:
            accepted = await s.infer(1, 2, 3)
            pool = s.pool
            stopping = asyncio.create_task(s.engine.stop(grace_s=30.0))
            await settle()
            (refused,) = await s.infer(4)
            with pytest.raises(ModelNotReadyError):
                await refused
            for _ in accepted:  # one at a time: each result lets the next batch go
                assert not pool.stopped
                pool.finish()
                await settle()
            await stopping
            assert pool.stopped
            assert_answers(await asyncio.gather(*accepted), [1, 2, 3])

    run(body())


def test_stop_past_the_grace_period_answers_every_request(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, SINGLE) as s:
            computing, waiting, queued = await s.infer(1, 2, 3)
            assert [values(b) for b in s.pool.dispatched] == [[1], [2]]
            await s.engine.stop(grace_s=0.0)
            await settle()
            assert all(t.done() for t in (computing, waiting, queued))
            with pytest.raises(WorkerCrashedError):
                await computing
            for task in (waiting, queued):  # the pool's stop sent `waiting` back to the queue
                with pytest.raises(ModelNotReadyError, match="was stopped"):
                    await task

    run(body())


# -- deadlines and admission -----------------------------------------------------------------
def test_an_expired_request_gets_the_timeout_error_and_is_never_computed(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, SINGLE, depth=1) as s:
            (busy,) = await s.infer(1)
            (late,) = await s.infer(2, timeout_us=1000)
            (patient,) = await s.infer(3)
            await s.tick(0.0005)
            assert not late.done()
            await s.tick(0.001)
            with pytest.raises(DeadlineExceededError, match=r"deadline exceeded after 1\.5 ms"):
                await late
            s.pool.finish()
            await settle()
            s.pool.finish()
            assert_answers(await asyncio.gather(busy, patient), [1, 3])
            assert [values(b) for b in s.pool.dispatched] == [[1], [3]]
            assert s.engine.metrics.expired.labels("m")._value.get() == 1
            fail = s.engine.stats("m").fail
            assert fail[0] == 1
            assert fail[1] == pytest.approx(1_500_000, abs=10)

    run(body())


def test_the_configured_default_timeout_applies_to_requests_without_one(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, SINGLE + "queue: {default_timeout_ms: 5}\n", depth=1) as s:
            busy, late = await s.infer(1, 2)
            await s.tick(0.006)
            with pytest.raises(DeadlineExceededError):
                await late
            s.pool.finish()
            assert_answers([await busy], [1])

    run(body())


def test_a_full_queue_refuses_at_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, SINGLE + "queue: {max_size: 2}\n", depth=1) as s:
            (busy,) = await s.infer(1)  # dispatched: the queue is empty again
            queued = await s.infer(2, 3)
            (refused,) = await s.infer(4)
            with pytest.raises(QueueFullError, match="queue"):
                await refused
            assert s.engine.metrics.rejected.labels("m", "admission")._value.get() == 1
            for _ in range(3):
                s.pool.finish()
                await settle()
            assert_answers(await asyncio.gather(busy, *queued), [1, 2, 3])

    run(body())

"""A hung instance as the driver sees it (scripted pool): retry once, fail clearly, count it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from surge.errors import WorkerCrashedError
from tests.unit.engine.fakes import serving, settle, values
from tests.unit.engine.test_driver import assert_answers, run

TWO = "max_batch_size: 1\ninstances: 2\n"
ONE = "max_batch_size: 1\n"


def hangs(s: object) -> float:
    value: float = s.engine.metrics.worker_hangs.labels("m")._value.get()  # type: ignore[attr-defined]
    return value


def test_hung_batch_is_retried_on_another_instance(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, TWO, depth=1) as s:
            tasks = await s.infer(1, 2)
            assert [values(b) for b in s.pool.dispatched] == [[1], [2]]
            hung = s.pool.hang(0)
            await settle()
            assert not tasks[0].done()
            s.pool.finish(1)  # instance 1 computes its own batch, then the retried one
            await settle()
            assert values(s.pool.dispatched[-1]) == values(hung) == [1]
            assert s.pool.dispatched[-1].requests[0].retries == 1
            s.pool.finish(1)
            assert_answers(await asyncio.gather(*tasks), [1, 2])
            assert hangs(s) == 1
            assert s.engine.model_ready("m")
            assert s.engine.index()[0]["reason"] == "1 of 2 instances live"
            assert s.engine.metrics.live_instances.labels("m")._value.get() == 1
            s.pool.restart(0)
            assert s.engine.index()[0]["reason"] == ""

    run(body())


def test_hung_request_is_retried_once_only(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, ONE) as s:
            (task,) = await s.infer(1)
            s.pool.hang()
            s.pool.restart()
            await settle()
            s.pool.hang()  # the retry hangs too
            await settle()
            with pytest.raises(WorkerCrashedError, match="hung on the retry too"):
                await task
            assert hangs(s) == 2

    run(body())


def test_hung_request_without_time_for_a_retry_fails_at_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, ONE) as s:
            (measured,) = await s.infer(0)
            s.pool.finish(service_s=0.050)  # a batch takes 50 ms
            await measured
            (task,) = await s.infer(1, timeout_us=1_000_000)
            s.clock.advance(0.98)  # 20 ms left when the hang is found
            s.pool.hang()
            await settle()
            with pytest.raises(WorkerCrashedError, match="no time left before its deadline"):
                await task

    run(body())


def test_spawn_failures_are_counted(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, ONE) as s:
            s.model.on_spawn_failure()
            s.model.on_spawn_failure()
            failures = s.engine.metrics.worker_spawn_failures.labels("m")._value.get()
            assert failures == 2

    run(body())


def test_the_pool_asks_the_scheduler_for_its_hang_estimate(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, ONE) as s:
            assert s.model.batch_estimate(1) is None  # nothing measured: no hang limit
            (task,) = await s.infer(1)
            s.pool.finish(service_s=0.030)
            await task
            assert s.model.batch_estimate(1) == pytest.approx(0.030)

    run(body())

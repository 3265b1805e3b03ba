"""`queue.timeout_action: delay` through the Engine and a served model's driver, on a scripted
pool and a hand-advanced clock: a delayed request is answered, after the requests in time,
and counts as neither expired, shed nor failed; a reload that changes the action leaves the
requests already queued to the old version's rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from surge.errors import DeadlineExceededError
from tests.unit.engine.fakes import serving, settle, values

DELAY = "max_batch_size: 1\nqueue: {timeout_action: DELAY}\n"


def _shed(engine: object, reason: str) -> float:
    return engine.metrics.shed.labels("m", reason)._value.get()  # type: ignore[attr-defined]


def test_a_delayed_request_is_answered_after_the_ones_in_time(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, DELAY, depth=1) as s:
            (busy,) = await s.infer(1)
            (late,) = await s.infer(2, timeout_us=1000)
            await s.tick(0.002)  # its deadline passed in the queue
            (fresh,) = await s.infer(3, timeout_us=60_000_000)
            assert not late.done()
            for _ in range(3):
                s.pool.finish()
                await settle()
            assert [values(b) for b in s.pool.dispatched] == [[1], [3], [2]]
            answer = await late
            np.testing.assert_array_equal(answer["y"], np.full((1, 4), 5.0, np.float32))
            await asyncio.gather(busy, fresh)
            assert s.engine.metrics.expired.labels("m")._value.get() == 0
            assert _shed(s.engine, "deadline") == _shed(s.engine, "late") == 0
            assert s.engine.stats("m").fail[0] == 0

    asyncio.run(body())


def test_a_reload_to_reject_leaves_the_delayed_requests_to_the_old_version(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, DELAY, depth=1) as s:
            old = s.pool
            (busy,) = await s.infer(1)
            (late,) = await s.infer(2, timeout_us=1000)
            await s.tick(0.002)
            reload = asyncio.create_task(s.engine.load("m", {
                "queue": {"timeout_action": "reject"}}))
            while s.pool is old:  # the new version starts before the old one drains
                await asyncio.sleep(0)
            await settle()
            old.finish()  # the old version goes on with its queue, under its own rules
            await settle()
            old.finish()
            await reload
            assert float((await late)["y"][0, 0]) == 5.0
            await busy
            (busy,) = await s.infer(3)  # the new version rejects a passed deadline
            (rejected,) = await s.infer(4, timeout_us=1000)
            await s.tick(0.002)
            with pytest.raises(DeadlineExceededError):
                await rejected
            s.pool.finish()
            await busy

    asyncio.run(body())

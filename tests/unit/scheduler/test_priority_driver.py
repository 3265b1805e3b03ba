"""Per-priority queues through the driver of a served model (scripted pool, hand-moved clock):
every way a request leaves gives its level's room back, and requests nobody waits for any more
take none."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from surge.errors import InputError, QueueFullError, WorkerCrashedError
from tests.unit.engine.fakes import serving, settle, values

BULK = 9  # V2 priority of the level with a bound of its own
ONE_AT_A_TIME = f"max_batch_size: 1\nqueue: {{max_size: 8, priorities: {{{BULK}: {{max_size: 1}}}}}}\n"


def test_a_request_whose_client_left_takes_no_room_when_its_batch_is_sent_back(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, ONE_AT_A_TIME) as s:
            (computing,) = await s.infer(1, priority=BULK)
            (behind,) = await s.infer(2, priority=BULK)
            assert s.model.scheduler.queued == 0  # both held by the instance
            behind.cancel()  # its client goes while it waits in the instance's second slot
            await settle()
            s.pool.crash()  # the batch behind the crashed one is sent back to the queue
            await settle()
            assert s.model.scheduler.queued == 0  # nobody waits for it: not queued again
            with pytest.raises(WorkerCrashedError):
                await computing
            s.pool.restart()
            (taken,) = await s.infer(3, priority=BULK)
            assert values(s.pool.dispatched[-1]) == [3.0]  # not computed for nobody first
            s.pool.finish()
            assert (await taken)["y"][0, 0] == 7.0

    asyncio.run(body())


def test_a_request_whose_client_left_is_not_retried_after_a_hang(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, ONE_AT_A_TIME) as s:
            (hung,) = await s.infer(1, priority=BULK)
            hung.cancel()
            await settle()
            s.pool.hang()  # a hung batch is queued once more: not for a client that left
            await settle()
            assert s.model.scheduler.queued == 0
            s.pool.restart()
            (taken,) = await s.infer(2, priority=BULK)
            assert values(s.pool.dispatched[-1]) == [2.0]
            s.pool.finish()
            assert (await taken)["y"][0, 0] == 5.0

    asyncio.run(body())


@pytest.mark.parametrize("priority", ["1", 1.0, True, None, -1, 2**64])
def test_a_priority_no_level_names_is_refused_by_the_python_api(
        tmp_path: Path, priority: object) -> None:
    async def body() -> None:
        async with serving(tmp_path, ONE_AT_A_TIME) as s:
            (sent,) = await s.infer(1, priority=priority)
            assert sent.done()  # refused at once, never queued nor computed
            assert isinstance(sent.exception(), InputError)
            assert re.fullmatch(r"priority must be an integer from 0 to 18446744073709551615 "
                                rf"\(0 = the default level\), got {re.escape(repr(priority))}",
                                str(sent.exception()))
            assert s.pool.dispatched == []

    asyncio.run(body())


def test_priorities_0_and_8_share_the_default_level_policy(tmp_path: Path) -> None:
    config = "max_batch_size: 1\nqueue: {priorities: {0: {max_size: 1}}}\n"

    async def body() -> None:
        async with serving(tmp_path, config) as s:
            await s.infer(1)
            await s.infer(2)  # priority 0: both held by the instance
            (waiting,) = await s.infer(3, priority=8)  # the default level's one place
            (refused,) = await s.infer(4)
            assert isinstance(refused.exception(), QueueFullError)
            assert "queue full for priority 0" in str(refused.exception())
            (urgent,) = await s.infer(5, priority=1)  # other levels keep their room
            assert not waiting.done()
            assert not urgent.done()
            assert s.model.scheduler.queued == 2

    asyncio.run(body())

"""Edges of the run-time SLO control on scripted pools: a ladder rung whose instances are lost
mid-load serves no request while the other rungs can; a request with more rows than a batch
holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from surge.engine.route import VariantRoute
from surge.errors import InputError, ModelNotReadyError
from tests.unit.engine.fakes import serving, settle
from tests.unit.engine.test_ladder_serving import Ladder, laddered, overload, run


async def steady(s: Ladder, waves: int, per_wave: int = 2
                 ) -> list[asyncio.Task[dict[str, np.ndarray]]]:
    """`per_wave` unpinned requests every 50 ms (40/s: well within either rung alone), each
    wave answered before the next."""
    tasks: list[asyncio.Task[dict[str, np.ndarray]]] = []
    for _ in range(waves):
        for i in range(per_wave):
            tasks.append(await s.infer(float(i)))
        s.clock.advance(0.05)
        await s.drain()
    return tasks


def test_a_rung_whose_instances_are_all_lost_takes_no_traffic_until_one_is_back(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            assert s.served.controller.level == 0.0
            s.pool("original").crash(0)  # its only instance: down until restarted
            await settle()
            tasks = await steady(s, waves=10)
            assert all(t.done() and t.exception() is None for t in tasks)
            assert s.served.controller.shares()["fast"] == 1.0
            s.pool("original").restart(0)
            await steady(s, waves=200)  # 10 s: a step up per 2-s calm hold
            assert s.served.controller.level == 0.0

    run(body())


def test_unpinned_requests_go_round_a_rung_lost_since_the_last_decision(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            await overload(s, waves=20, per_wave=80)  # the surge: all of it on `fast`
            assert s.served.controller.shares()["fast"] == 1.0
            s.pool("fast").crash(0)
            await settle()
            route = VariantRoute()
            task = await s.infer(1.0, route)  # no decision due yet: the shares still say fast
            await s.drain()
            assert task.done()
            assert task.exception() is None
            assert route.served == "original"
            pinned = await s.infer(1.0, VariantRoute(variant="fast"))
            error = pinned.exception()
            assert isinstance(error, ModelNotReadyError)
            assert "variant 'fast' has no live instance" in str(error)
            assert "without the variant pin" in str(error)

    run(body())


@pytest.mark.parametrize(("config", "rows", "message"), [
    ("max_batch_size: 8\nbatching: {enabled: false}\n", 2, "batch size 2 exceeds 1, the most rows"),
    ("max_batch_size: 4\n", 5, "batch size 5 exceeds 4, the most rows a batch of this model holds"),
])
def test_more_rows_than_a_batch_holds_is_a_client_error(tmp_path: Path, config: str, rows: int,
                                                       message: str) -> None:
    # The scripted model accepts 8 rows; the queue's batch holds fewer: a 400 naming the
    # value, not the scheduler's ValueError (an HTTP 500).
    async def body() -> None:
        async with serving(tmp_path, config) as s:
            (task,) = await s.infer(1.0, rows=rows)
            error = task.exception()
            assert isinstance(error, InputError)
            assert message in str(error)

    run(body())

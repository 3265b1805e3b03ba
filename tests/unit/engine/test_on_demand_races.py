"""Load on demand under races: concurrent first requests to more models than the budget holds,
and explicit unloads while a request's load waits its turn (scripted pools, made-up sizes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from surge.errors import ModelNotReadyError
from tests.unit.engine.fakes import settle
from tests.unit.engine.test_on_demand import models, until


def test_concurrent_first_requests_to_more_models_than_fit_are_all_answered(
        tmp_path: Path) -> None:
    """Budget for one model, requests for three at once: each is answered (none finds its model
    evicted before it queued: 404), and never more than one model is loaded at a time."""
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": "", "c": ""}, budget_mb=150) as m:
            await m.answer("a")  # measured: the others are expected to take as much
            peak = 0

            def loaded() -> int:
                return sum(1 for p in m.pools.built if p.signature is not None and not p.stopped)

            tasks = [m.send(name) for _ in range(5) for name in "abc"]
            watch = asyncio.create_task(until(lambda: all(t.done() for t in tasks)))
            while not watch.done():
                peak = max(peak, loaded())
                for name in "abc":
                    pool = m.pools.latest.get(name)
                    if pool is not None and pool.held[0]:
                        pool.finish()
                await asyncio.sleep(0)
            errors = [t.exception() for t in tasks if t.exception() is not None]
            assert [repr(e) for e in errors] == []
            assert peak == 1

    asyncio.run(body())


def test_a_model_unloaded_while_its_requests_load_waits_its_turn_stays_unloaded(
        tmp_path: Path) -> None:
    """Under a budget the requests' loads go one at a time; one whose model is unloaded
    explicitly meanwhile does not load it (the unload wins), and counts as no failed load."""
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": "", "c": ""}, budget_mb=150) as m:
            await m.answer("a")
            m.pools.gates["b"] = asyncio.Event()
            first = m.send("b")
            await until(lambda: m.pools.starts["b"] == 1)
            waiting = m.send("c")  # its load waits behind b's
            await settle()
            assert m.pools.starts["c"] == 0
            await m.engine.unload("c")
            m.pools.gates["b"].set()
            await m.finish("b", first)
            await until(waiting.done)
            assert isinstance(waiting.exception(), ModelNotReadyError)
            assert m.pools.starts["c"] == 0
            assert m.state("c") == ("UNAVAILABLE", "unloaded")
            assert m.metric("surge_model_loads_total", model="c", outcome="failure") == 0
            await m.engine.load("c")  # an explicit load brings it back at once
            assert (await m.answer("c")).shape == (1, 4)

    asyncio.run(body())

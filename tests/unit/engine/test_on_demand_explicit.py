"""Explicit loads (the repository API's `Engine.load`) under a memory budget: concurrent ones
take turns as requests' loads do, so the budget holds while they run (scripted pools)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from tests.unit.engine.test_on_demand import Models, models, pipeline_engine

NAMES = "bcdefg"  # loaded together, after "a"


def _held(m: Models) -> int:
    """Models loaded or loading: their pools were built and not stopped yet."""
    return sum(1 for pool in m.pools.built if not pool.stopped)


async def _load_all_watching(m: Models) -> tuple[int, list[BaseException | None]]:
    """Explicit loads of every model at once; each load waits at its pool's gate a while (long
    enough for loads running together to show), then is let through. Returns the peak of
    models held and each load's outcome."""
    for name in NAMES:
        m.pools.gates[name] = asyncio.Event()
    loads = [asyncio.create_task(m.engine.load(name)) for name in NAMES]
    peak = 0
    while not all(task.done() for task in loads):
        for _ in range(20):
            peak = max(peak, _held(m))
            await asyncio.sleep(0.001)
        for name in NAMES:
            if m.pools.starts[name]:
                m.pools.gates[name].set()
    return peak, [task.exception() for task in loads]


def test_concurrent_explicit_loads_hold_no_more_than_the_budget(tmp_path: Path) -> None:
    """Budget for one model, six explicit loads at once: never more than one model loaded or
    loading, each load succeeds (evicting the one before) and none waits forever."""
    async def body() -> None:
        configs = dict.fromkeys("a" + NAMES, "")
        async with models(tmp_path, configs, budget_mb=150) as m:
            # Loaded and measured first (the others are expected to take as much); not among
            # the loads at once, as a reload keeps the old version until the new one is up.
            await m.engine.load("a")
            peak, errors = await asyncio.wait_for(_load_all_watching(m), 10.0)
            assert errors == [None] * len(NAMES)
            assert peak == 1
            assert _held(m) == 1
            assert sum(m.engine.model_ready(name) for name in "a" + NAMES) == 1
            evictions = sum(m.metric("surge_model_evictions_total", model=name)
                            for name in "a" + NAMES)
            assert evictions == len(NAMES)  # all but the last one loaded

    asyncio.run(body())


def test_explicit_loads_without_a_budget_run_together(tmp_path: Path) -> None:
    """No budget: nothing tracked, so the loads do not take turns (as before)."""
    async def body() -> None:
        async with models(tmp_path, dict.fromkeys(NAMES, "")) as m:
            peak, errors = await asyncio.wait_for(_load_all_watching(m), 10.0)
            assert errors == [None] * len(NAMES)
            assert peak == len(NAMES)

    asyncio.run(body())


def test_explicit_pipeline_loads_under_a_budget_do_not_deadlock(tmp_path: Path) -> None:
    """A pipeline's explicit load loads its model step within its own turn; an explicit load of
    that model and a reload of the pipeline at once all finish, and the pipeline answers."""
    from tests.unit.pipeline.test_served import values

    async def body() -> None:
        engine = pipeline_engine(tmp_path, 250)
        await engine.start()
        try:
            await asyncio.wait_for(engine.load("p"), 10.0)
            assert engine.model_ready("m")
            assert engine.model_ready("p")
            await asyncio.wait_for(asyncio.gather(
                engine.load("m"), engine.load("p"), engine.load("other")), 10.0)
            assert (await engine.infer("p", None, values(1.0)))["total"].shape == (1, 1)
            other = {"x": np.ones((1, 4), np.float32)}
            assert (await engine.infer("other", None, other))["y"].shape == (1, 4)
        finally:
            await engine.stop(grace_s=0.0)

    asyncio.run(body())


def test_eager_loads_at_start_take_turns_under_a_budget(tmp_path: Path) -> None:
    """Six models loaded at start with a budget for one: never more than one loaded or loading
    at once (they all loaded together, each finding the budget empty), and start finishes with
    one of them resident."""
    from surge.engine import Engine
    from surge.engine.ondemand import ResidencyOptions
    from surge.engine.residency import MemoryBudget
    from surge.repository import Repository
    from tests.unit.engine.fakes import FakeClock, make_repo
    from tests.unit.engine.test_on_demand import MB, SizedPools

    async def body() -> None:
        for name in NAMES:
            make_repo(tmp_path, "max_batch_size: 1\n", name)
        pools = SizedPools(FakeClock())
        for name in NAMES:
            pools.gates[name] = asyncio.Event()
        engine = Engine(Repository(tmp_path), pool_factory=pools, clock=pools.clock,
                        residency=ResidencyOptions("eager", MemoryBudget(150 * MB)))
        start = asyncio.create_task(engine.start())
        peak = 0
        try:
            while not start.done():
                for _ in range(20):
                    peak = max(peak, sum(1 for p in pools.built if not p.stopped))
                    await asyncio.sleep(0.001)
                for name in NAMES:
                    if pools.starts[name]:
                        pools.gates[name].set()
            await start
            assert peak == 1
            assert sum(engine.model_ready(name) for name in NAMES) == 1
        finally:
            await engine.stop(grace_s=0.0)

    asyncio.run(asyncio.wait_for(body(), 20.0))

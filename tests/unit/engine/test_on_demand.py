"""Load on demand and eviction in the Engine, on scripted pools with made-up memory sizes.

A load waits at its model's gate until the test opens it (and may move the fake clock, to
look slow), fails when the test says so, and reports the memory the test gave its model.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from surge.engine import Engine, PoolEvents, PoolSpec
from surge.engine.ondemand import ResidencyOptions, measure, pools_of, process_rss
from surge.engine.residency import MemoryBudget
from surge.errors import ModelLoadError, ModelNotReadyError, NotFoundError
from surge.repository import Repository
from tests.unit.engine.fakes import WIDTH, FakeClock, FakePool, make_repo, settle

MB = 10**6


class SizedPools:
    """A pool factory whose pools take a gate, a load time, a failure and a size per model."""

    def __init__(self, clock: FakeClock, keep: bool = True) -> None:
        self.clock, self.keep = clock, keep
        self.sizes: dict[str, int] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.load_s: dict[str, float] = {}
        self.failures: dict[str, str] = {}
        self.starts = Counter[str]()
        self.latest: dict[str, SizedPool] = {}
        self.built: list[SizedPool] = []

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> SizedPool:
        pool = SizedPool(spec, events, self)
        self.latest[spec.ref] = pool
        if self.keep:
            self.built.append(pool)
        return pool


class SizedPool(FakePool):
    def __init__(self, spec: PoolSpec, events: PoolEvents, owner: SizedPools) -> None:
        super().__init__(spec, events)
        self.owner = owner

    def resident_bytes(self) -> int:
        return self.owner.sizes.get(self.spec.ref, 100 * MB)

    async def start(self) -> None:
        owner, ref = self.owner, self.spec.ref
        owner.starts[ref] += 1
        gate = owner.gates.get(ref)
        if gate is not None:
            await gate.wait()
        owner.clock.advance(owner.load_s.get(ref, 0.0))
        if ref in owner.failures:
            raise ModelLoadError(f"{ref}/1/model.onnx: {owner.failures[ref]}")
        await super().start()


class Models:
    """An Engine over models a, b, c (and any named) on sized pools."""

    def __init__(self, engine: Engine, pools: SizedPools, clock: FakeClock) -> None:
        self.engine, self.pools, self.clock = engine, pools, clock

    def send(self, name: str, value: float = 1.0, timeout_us: int | None = None
             ) -> asyncio.Task[dict[str, np.ndarray]]:
        return asyncio.create_task(self.engine.infer(
            name, None, {"x": np.full((1, WIDTH), value, np.float32)}, timeout_us=timeout_us))

    async def answer(self, name: str, value: float = 1.0) -> np.ndarray:
        """One request for `name`, loaded if need be and answered."""
        task = self.send(name, value)
        await self.finish(name, task)
        return (await task)["y"]

    async def finish(self, name: str, *tasks: asyncio.Task[dict[str, np.ndarray]]) -> None:
        """Answer what `name` is computing until `tasks` are done (its load may take a few
        thread hops: config.yaml is read off the event loop)."""
        await until(lambda: all(t.done() for t in tasks) or self._computing(name))
        while self._computing(name) or not all(t.done() for t in tasks):
            if self._computing(name):
                self.pools.latest[name].finish()
            await settle()
            await until(lambda: all(t.done() for t in tasks) or self._computing(name))

    def _computing(self, name: str) -> bool:
        pool = self.pools.latest.get(name)
        return pool is not None and bool(pool.held[0])

    async def loaded(self, name: str) -> None:
        await until(lambda: self.engine.model_ready(name))

    def state(self, name: str) -> tuple[str, str]:
        (row,) = [r for r in self.engine.index() if r["name"] == name]
        return row["state"], row["reason"]

    def metric(self, metric: str, **labels: str) -> float:
        value = self.engine.metrics.registry.get_sample_value(metric, labels or None)
        return value or 0.0


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Let the loop (and its worker threads) run until `condition` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


@asynccontextmanager
async def models(root: Path, configs: dict[str, str], *, load: str = "on-demand",
                 budget_mb: int | None = None, keep: bool = True) -> AsyncIterator[Models]:
    for name, config in configs.items():  # batches of one: no batching delay on a fake clock
        make_repo(root, "max_batch_size: 1\n" + config, name)
    clock = FakeClock()
    pools = SizedPools(clock, keep)
    budget = MemoryBudget(budget_mb * MB if budget_mb else None)
    engine = Engine(Repository(root), pool_factory=pools, clock=clock,
                    residency=ResidencyOptions(load, budget))  # type: ignore[arg-type]
    await engine.start()
    try:
        yield Models(engine, pools, clock)
    finally:
        await engine.stop(grace_s=0.0)


def test_on_demand_models_are_listed_cold_and_loaded_by_their_first_request(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": "load: eager\n"}) as m:
            assert list(m.pools.starts) == ["b"]
            assert m.state("a") == ("UNLOADED", "loads on its first request")
            assert not m.engine.model_ready("a")
            assert m.metric("surge_models_loaded") == 1
            np.testing.assert_array_equal(await m.answer("a", 2.0), np.full((1, WIDTH), 5.0))
            assert m.state("a")[0] == "READY"
            assert m.engine.model_ready("a")
            assert m.metric("surge_models_loaded") == 2
            assert m.metric("surge_cold_start_seconds_count", model="a") == 1
            assert m.metric("surge_model_memory_bytes", model="a") == 100 * MB

    asyncio.run(body())


def test_a_server_default_of_eager_loads_all_but_models_asking_for_on_demand(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": "load: on-demand\n"}, load="eager") as m:
            assert list(m.pools.starts) == ["a"]
            assert m.state("b")[0] == "UNLOADED"

    asyncio.run(body())


def test_concurrent_cold_requests_trigger_one_load(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            m.pools.gates["a"] = asyncio.Event()
            tasks = [m.send("a", float(v)) for v in range(5)]
            await until(lambda: m.pools.starts["a"] == 1)
            assert m.state("a")[0] == "LOADING"
            m.pools.gates["a"].set()
            await m.finish("a", *tasks)
            answers = [float((await t)["y"][0, 0]) for t in tasks]
            assert answers == [2 * v + 1 for v in range(5)]
            assert m.pools.starts["a"] == 1

    asyncio.run(body())


def test_a_cold_request_waits_within_its_deadline_and_is_refused_past_it(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            m.pools.gates["a"] = asyncio.Event()
            patient = m.send("a", 1.0, timeout_us=30_000_000)
            hurried = m.send("a", 1.0, timeout_us=20_000)
            await asyncio.sleep(0.1)  # past the hurried one's 20 ms
            with pytest.raises(ModelNotReadyError, match=r"model 'a' is loading: not loaded "
                                                         r"within the request's timeout of 20 ms"):
                await hurried
            assert not patient.done()
            m.pools.gates["a"].set()
            await m.finish("a", patient)
            assert float((await patient)["y"][0, 0]) == 3.0

    asyncio.run(body())


def test_a_cold_start_known_to_take_longer_than_the_deadline_is_refused_at_once(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            m.pools.load_s["a"] = 2.0  # each load of a takes 2 s on the engine's clock
            await m.answer("a")
            assert await m.engine.evict("a")
            assert m.state("a")[0] == "EVICTED"
            with pytest.raises(ModelNotReadyError, match=r"'a' is loading: its cold start takes "
                                                         r"about 2.00 s, more than .* 1000 ms"):
                await m.send("a", timeout_us=1_000_000)
            # The refused request still started the load: the next one finds it warm.
            await m.loaded("a")
            assert m.pools.starts["a"] == 2
            task = m.send("a", timeout_us=1_000_000)
            await m.finish("a", task)
            assert float((await task)["y"][0, 0]) == 3.0

    asyncio.run(body())


def test_the_wait_for_a_cold_start_counts_against_the_request_deadline(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            m.pools.load_s["a"] = 2.0  # on the engine's clock
            started = m.clock.now
            task = m.send("a", timeout_us=5_000_000)
            await until(lambda: m._computing("a"))
            (request,) = m.pools.latest["a"].held[0][0].requests
            assert request.deadline == pytest.approx(started + 5.0)
            await m.finish("a", task)

    asyncio.run(body())


def test_a_burst_on_a_cold_model_does_not_delay_a_warm_model(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"cold": "", "warm": "load: eager\n"}) as m:
            m.pools.gates["cold"] = asyncio.Event()
            burst = [m.send("cold", float(v)) for v in range(50)]
            await until(lambda: m.pools.starts["cold"] == 1)
            warm = m.send("warm", 4.0)
            await m.finish("warm", warm)
            assert float((await warm)["y"][0, 0]) == 9.0  # answered while cold still loads
            assert not any(t.done() for t in burst)
            m.pools.gates["cold"].set()
            await m.finish("cold", *burst)
            assert [float((await t)["y"][0, 0]) for t in burst] == [2 * v + 1 for v in range(50)]
            assert m.pools.starts["cold"] == 1

    asyncio.run(body())


def test_a_failed_load_answers_the_reason_and_is_retried_after_a_backoff(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            m.pools.failures["a"] = "bad weights"
            with pytest.raises(ModelNotReadyError, match="model 'a' failed to load: .*bad weights"):
                await m.send("a")
            state, reason = m.state("a")
            assert state == "UNAVAILABLE"
            assert "bad weights" in reason
            with pytest.raises(ModelNotReadyError, match=r"bad weights.*tried again on a request "
                                                         r"after 1.0 s"):
                await m.send("a")
            assert m.pools.starts["a"] == 1  # refused without a second load
            m.clock.advance(1.1)
            with pytest.raises(ModelNotReadyError, match="failed to load"):
                await m.send("a")
            assert m.pools.starts["a"] == 2
            m.clock.advance(1.1)  # the second failure in a row waits 2 s
            with pytest.raises(ModelNotReadyError, match="after 0.9 s"):
                await m.send("a")
            del m.pools.failures["a"]
            m.clock.advance(1.0)
            assert float((await m.answer("a"))[0, 0]) == 3.0
            assert m.pools.starts["a"] == 3

    asyncio.run(body())


def test_the_least_recently_used_model_is_evicted_to_fit_the_budget(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": "", "c": ""}, budget_mb=250) as m:
            for name in ("a", "b"):
                await m.answer(name)
                m.clock.advance(1.0)
            await m.answer("a")  # b is now the least recently used
            m.clock.advance(1.0)
            await m.answer("c")
            assert m.state("b") == (
                "EVICTED",
                "unloaded to fit the memory budget (least recently used); loads on its next "
                "request")
            assert m.pools.latest["b"].stopped
            assert not m.pools.latest["a"].stopped
            assert m.metric("surge_model_evictions_total", model="b") == 1
            m.clock.advance(1.0)
            await m.answer("b")  # loads again, evicting a (used before c)
            assert m.state("a")[0] == "EVICTED"
            assert m.state("c")[0] == "READY"
            assert m.metric("surge_models_loaded") == 2

    asyncio.run(body())


def test_pinned_models_are_never_evicted(tmp_path: Path) -> None:
    async def body() -> None:
        configs = {"p": "pinned: true\n", "a": "", "b": ""}
        async with models(tmp_path, configs, budget_mb=250) as m:
            for name in ("p", "a", "b"):  # p is the least recently used
                await m.answer(name)
                m.clock.advance(1.0)
            assert [m.state(n)[0] for n in ("p", "a", "b")] == ["READY", "EVICTED", "READY"]
            await m.answer("a")
            assert [m.state(n)[0] for n in ("p", "a", "b")] == ["READY", "READY", "EVICTED"]
            # Measured larger than expected: the unpinned others go, never p.
            m.pools.sizes["b"] = 150 * MB
            await m.answer("b")
            assert [m.state(n)[0] for n in ("p", "a", "b")] == ["READY", "EVICTED", "READY"]
            assert m.pools.starts["p"] == 1

    asyncio.run(body())


def test_a_budget_held_by_pinned_models_refuses_a_measured_model_with_the_reason(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"p": "pinned: true\n", "a": ""}, budget_mb=150) as m:
            await m.answer("p")
            # a was never measured: its 100 MB is a guess from p, so it loads to be measured
            # (and stays, over the budget, since nothing can go).
            await m.answer("a")
            assert m.state("a")[0] == "READY"
            assert await m.engine.evict("a")
            with pytest.raises(ModelNotReadyError, match=r"model 'a' failed to load: model 'a' "
                                                         r"needs about 100.0 MB .* pinned"):
                await m.send("a")
            assert m.state("p")[0] == "READY"
            assert "pinned" in m.state("a")[1]

    asyncio.run(body())


def test_an_explicit_unload_stays_unloaded(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            await m.answer("a")
            await m.engine.unload("a")
            with pytest.raises(NotFoundError, match="not loaded: unloaded"):
                await m.send("a")
            await m.engine.load("a")
            assert float((await m.answer("a"))[0, 0]) == 3.0
            assert m.pools.starts["a"] == 2

    asyncio.run(body())


def test_200_load_and_evict_cycles_leave_no_tasks_pools_or_memory_behind(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": ""}, budget_mb=150, keep=False) as m:

            async def cycles(count: int) -> None:
                for _ in range(count):
                    for name in ("a", "b"):  # each load evicts the other
                        await m.answer(name)
                        m.clock.advance(1.0)

            await cycles(5)  # warm-up: caches, metric children
            tasks = len(asyncio.all_tasks())
            tracemalloc.start()
            gc.collect()  # served models hold reference cycles (pool <-> events)
            before = tracemalloc.take_snapshot()
            await cycles(200)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
            assert m.pools.starts == {"a": 205, "b": 205}
            assert m.metric("surge_model_evictions_total", model="a") == 205
            assert len(asyncio.all_tasks()) == tasks
            assert sum(1 for p in m.pools.latest.values() if not p.stopped) == 1
            # A leaked served model (scheduler, futures, metrics children) is several KiB:
            # 400 of them would be megabytes.
            assert growth < 256 * 1024, f"{growth} bytes more after 200 cycles"

    asyncio.run(body())


def pipeline_engine(root: Path, budget_mb: int) -> Engine:
    """Pipeline p over model m, and a model `other`, on pools of 100 MB each, on demand under
    a budget of `budget_mb`."""
    from tests.unit.pipeline.test_served import AutoPool, repository

    class SizedAutoPool(AutoPool):
        def resident_bytes(self) -> int:
            return 100 * MB

    repo = repository(root)
    make_repo(root, "", "other")
    return Engine(repo, pool_factory=SizedAutoPool, residency=ResidencyOptions(
        "on-demand", MemoryBudget(budget_mb * MB)))


def test_the_models_of_a_loaded_pipeline_are_not_evicted(tmp_path: Path) -> None:
    from tests.unit.pipeline.test_served import values

    async def body() -> None:
        engine = pipeline_engine(tmp_path, 150)
        await engine.start()
        try:
            assert (await engine.infer("p", None, values(1.0)))["total"].shape == (1, 1)
            other = {"x": np.ones((1, WIDTH), np.float32)}
            assert (await engine.infer("other", None, other))["y"].shape == (1, WIDTH)
            await engine.evict("other")
            # Measured now: m, the least recently used, would have to go, but p needs it.
            with pytest.raises(ModelNotReadyError, match="needs about 100.0 MB"):
                await engine.infer("other", None, other)
            assert engine.model_ready("m")
            assert engine.model_ready("p")
        finally:
            await engine.stop(grace_s=0.0)

    asyncio.run(body())


def test_memory_is_measured_from_every_pool_behind_a_served_model() -> None:
    class Reported:  # a view onto a shared group: it knows what its model added
        def resident_bytes(self) -> int:
            return 5 * MB

    class Processes:  # dedicated workers: their whole resident memory
        def pids(self) -> list[int]:
            return [os.getpid()]

    model = SimpleNamespace(pool=Reported())
    ladder = SimpleNamespace(rungs={"original": SimpleNamespace(pool=Reported()),
                                    "int8": SimpleNamespace(pool=Processes())})
    pipeline = SimpleNamespace(steps=["its models are measured as models"])
    assert len(pools_of([model, ladder, pipeline])) == 3
    assert measure(pools_of([model, pipeline])) == 5 * MB
    own = process_rss(os.getpid())
    assert own > 10 * MB
    assert abs(measure(pools_of([ladder])) - (5 * MB + own)) < 5 * MB  # the rungs' sum
    assert process_rss(2**22 + 1) == 0  # no such process

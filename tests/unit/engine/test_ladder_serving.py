"""A model served as an accuracy ladder on scripted pools: every rung loaded and probed, the
variant that answered each request reported, pins honoured under overload, per-variant
latency data in the statistics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import yaml

from surge.engine import Engine
from surge.engine.ladder import ServedLadder
from surge.engine.route import VariantRoute, request_route
from surge.errors import ConfigError, DeadlineExceededError, InputError, WorkerCrashedError
from surge.protocol.metadata import model_statistics
from surge.repository import Repository
from tests.unit.engine.fakes import WIDTH, FakeClock, FakePool, FakePools, make_repo, settle

T = TypeVar("T")
LADDER = ("max_batch_size: 8\nslo_p99_ms: 50\nladder: [original, fast]\n"
          "max_accuracy_drop: 1.0\n")
# Batch times (seconds) by rung: `fast` computes in a third of the time.
TIMES = {"original": (0.004, 0.002), "fast": (0.0013, 0.0007)}


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def add_variant(root: Path, name: str, accuracy: float | None, reference: float = 0.91) -> None:
    folder = root / "m" / "variants" / name
    folder.mkdir(parents=True)
    check = {"accuracy": accuracy, "reference_accuracy": reference} if accuracy else {}
    (folder / "variant.yaml").write_text(yaml.safe_dump({"name": name, "check": check}))


def rung_of(pool: FakePool) -> str:
    return pool.spec.ref.partition("@")[2] or "original"


def seconds(pool: FakePool, size: int) -> float:
    a, b = TIMES[rung_of(pool)]
    return a + b * size


class Ladder:
    def __init__(self, engine: Engine, pools: FakePools, clock: FakeClock) -> None:
        self.engine, self.pools, self.clock = engine, pools, clock

    @property
    def served(self) -> ServedLadder:
        ladder = self.engine._find("m", None)
        assert isinstance(ladder, ServedLadder)
        return ladder

    def pool(self, rung: str) -> FakePool:
        return next(p for p in self.pools.built if rung_of(p) == rung)

    def finish_all(self) -> None:
        for pool in self.pools.built:
            while pool.held[0]:
                pool.finish(service_s=seconds(pool, pool.held[0][0].size))

    async def drain(self) -> None:
        """Answer every batch, including those dispatched from the queues meanwhile."""
        while any(p.held[0] for p in self.pools.built):
            self.finish_all()
            await settle()

    async def infer(self, value: float, route: VariantRoute | None = None,
                    **kwargs: int) -> asyncio.Task[dict[str, np.ndarray]]:
        async def one() -> dict[str, np.ndarray]:
            request_route.set(route)
            return await self.engine.infer(
                "m", None, {"x": np.full((1, WIDTH), value, np.float32)}, **kwargs)

        task = asyncio.create_task(one())
        await settle()
        return task


@asynccontextmanager
async def laddered(root: Path, config: str = LADDER) -> AsyncIterator[Ladder]:
    """Serving `m` as a ladder; each rung's load-time probe is answered with its batch times."""
    make_repo(root, config)
    add_variant(root, "fast", 0.906)
    pools, clock = FakePools(), FakeClock()
    engine = Engine(Repository(root), pool_factory=pools, clock=clock)
    starting = asyncio.create_task(engine.start())
    ladder = Ladder(engine, pools, clock)
    for _ in range(1000):  # the rungs start one after the other, each probing twice
        if starting.done():
            break
        ladder.finish_all()
        await asyncio.sleep(0.001)
    await starting
    try:
        yield ladder
    finally:
        await engine.stop(grace_s=0.0)


def test_every_rung_is_loaded_and_probed_before_the_first_request(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            assert sorted(rung_of(p) for p in s.pools.built) == ["fast", "original"]
            assert [r.accuracy for r in s.served.controller.rungs] == pytest.approx([91.0, 90.6])
            for rung, (a, b) in TIMES.items():
                time = s.served.rungs[rung].scheduler.fitted_time(4)
                assert time == pytest.approx(a + 4 * b)

    run(body())


def test_each_answer_says_which_variant_computed_it(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            route = VariantRoute()
            task = await s.infer(1.0, route)
            s.finish_all()
            await settle()
            assert task.result()["y"][0, 0] == 3.0
            assert (route.served, route.version) == ("original", 1)
            pinned = VariantRoute(variant="fast")
            task = await s.infer(1.0, pinned)
            s.finish_all()
            await settle()
            assert task.done()
            assert pinned.served == "fast"
            metrics = s.engine.metrics
            assert metrics.variant_requests.labels("m", "fast")._value.get() == 1

    run(body())


def test_the_ladders_statistics_sum_each_rungs_cpu(tmp_path: Path) -> None:
    """compute_cpu and preprocess_cpu (the workers' own CPU) add up over the rungs like every
    other figure; `/v2/models/m/stats` shows the preprocess part."""
    async def body() -> None:
        async with laddered(tmp_path) as s:
            for rung in ("original", "fast"):
                task = await s.infer(1.0, VariantRoute(variant=rung))
                pool = s.pool(rung)
                pool.finish(service_s=seconds(pool, 1), cpu_ns=3_000_000,
                            preprocess_cpu_ns=1_000_000)
                await settle()
                assert task.done()
            rungs = [m.counters.snapshot("m", 1) for m in s.served.rungs.values()]
            stats = s.engine.stats("m")
            for field in ("compute_cpu", "preprocess_cpu", "compute_infer", "queue"):
                summed = tuple(sum(r) for r in zip(*(getattr(p, field) for p in rungs),
                                                   strict=True))
                assert getattr(stats, field) == summed, field
            assert stats.compute_cpu[1] == 6_000_000  # the load-time probes reported none
            assert stats.preprocess_cpu == (2, 2_000_000)
            entry = model_statistics("m", 1, stats)
            assert entry["preprocess"] == {"batches": 2, "cpu_ns": 2_000_000}

    run(body())


async def overload(s: Ladder, waves: int, per_wave: int, route: VariantRoute | None = None
                   ) -> list[asyncio.Task[dict[str, np.ndarray]]]:
    """`per_wave` requests every 50 ms (a rate far past the original's capacity)."""
    tasks = []
    for _ in range(waves):
        for i in range(per_wave):
            tasks.append(await s.infer(float(i), route))
        s.clock.advance(0.05)
        await s.drain()
    return tasks


def test_a_surge_moves_unpinned_traffic_down_and_never_a_pinned_request(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            flood = await overload(s, waves=20, per_wave=80)
            assert all(t.done() for t in flood)
            assert s.served.controller.level == 1.0
            assert s.served.controller.shares() == {"original": 0.0, "fast": 1.0}
            before = len(s.pool("original").dispatched)
            routes = [VariantRoute(full_accuracy=True) for _ in range(5)]
            tasks = [await s.infer(1.0, r) for r in routes]
            tasks += [await s.infer(2.0) for _ in range(5)]
            await s.drain()
            assert all(t.done() for t in tasks)
            assert {r.served for r in routes} == {"original"}
            moved = s.pool("original").dispatched[before:]
            assert sum(b.size for b in moved) == 5  # only the pinned ones
            stats = s.engine.stats("m")
            assert stats.latency["ladder"]["shares"]["fast"] == 1.0  # type: ignore[index]
            variants = stats.latency["variants"]
            assert set(variants) == {"original", "fast"}  # type: ignore[arg-type]
            entry = model_statistics("m", 1, stats)
            assert entry["latency"]["variants"]["fast"]["b_ms"] == pytest.approx(0.7)
            assert entry["inference_count"] == stats.inference_count > 0
            gauge = s.engine.metrics.ladder_share.labels("m", "fast")._value.get()
            assert gauge == 1.0

    run(body())


def test_a_pin_to_a_variant_that_is_not_served_is_a_client_error(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            task = await s.infer(1.0, VariantRoute(variant="int4"))
            with pytest.raises(InputError, match="'int4' is not served"):
                task.result()

    run(body())


def test_a_plain_model_reports_its_variant_and_refuses_other_pins(tmp_path: Path) -> None:
    async def body() -> None:
        make_repo(tmp_path, "max_batch_size: 1\nqueue: {default_timeout_ms: 20}\n")
        pools, clock = FakePools(depth=1), FakeClock()
        engine = Engine(Repository(tmp_path), pool_factory=pools, clock=clock)
        await engine.start()
        s = Ladder(engine, pools, clock)
        route = VariantRoute(full_accuracy=True)
        task = await s.infer(1.0, route)
        s.finish_all()
        await settle()
        assert task.done()
        assert (route.served, route.version) == ("original", 1)
        refused = await s.infer(1.0, VariantRoute(variant="fast"))
        with pytest.raises(InputError, match="served: original"):
            refused.result()
        late = [await s.infer(2.0) for _ in range(3)]  # one computes, two wait past 20 ms
        clock.advance(0.025)
        engine._find("m", None).wake()
        await settle()
        assert sum(isinstance(t.exception(), DeadlineExceededError)
                   for t in late if t.done()) == 2
        assert engine.metrics.shed.labels("m", "deadline")._value.get() == 2
        await engine.stop(grace_s=0.0)
        outcomes = await asyncio.gather(*late, return_exceptions=True)
        assert sum(isinstance(o, WorkerCrashedError) for o in outcomes) == 1  # stopped mid-batch

    run(body())


def test_a_rung_without_measured_accuracy_fails_the_load(tmp_path: Path) -> None:
    async def body() -> None:
        make_repo(tmp_path, LADDER.replace("fast", "bare"))
        add_variant(tmp_path, "bare", None)
        engine = Engine(Repository(tmp_path), models=["m"], pool_factory=FakePools(),
                        clock=FakeClock())
        with pytest.raises(ConfigError, match="rung 'original' has no measured accuracy"):
            await engine.start()

    run(body())


def test_tuned_accuracies_take_precedence_over_variant_yaml(tmp_path: Path) -> None:
    async def body() -> None:
        config = LADDER + "ladder_accuracy: {original: 88.5, fast: 88.1}\n"
        async with laddered(tmp_path, config) as s:
            assert [r.accuracy for r in s.served.controller.rungs] == [88.5, 88.1]

    run(body())


@pytest.mark.parametrize(("extra", "error"), [
    ("ladder: [original, fast]\n", "needs slo_p99_ms and max_accuracy_drop"),
    ("ladder: [original]\nslo_p99_ms: 50\nmax_accuracy_drop: 1\n", "two or more"),
    ("ladder: [original, fast]\nslo_p99_ms: 50\nmax_accuracy_drop: 1\nvariant: fast\n",
     "replaces `variant`"),
    ("ladder_accuracy: {fast: 90}\n", "for a model with a ladder"),
])
def test_ladder_config_is_checked(tmp_path: Path, extra: str, error: str) -> None:
    make_repo(tmp_path, "max_batch_size: 8\n" + extra)
    with pytest.raises(ConfigError, match=error):
        Repository(tmp_path).config("m")

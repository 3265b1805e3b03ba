"""The Engine builds every served version's pool through its factory and keeps the index."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from surge.engine import Engine
from surge.errors import ModelNotReadyError, NotFoundError
from surge.repository import Repository
from tests.unit.engine.fakes import WIDTH, FakeClock, FakePools, make_repo, settle


def engine_on_fakes(root: Path) -> tuple[Engine, FakePools]:
    pools = FakePools()
    return Engine(Repository(root), pool_factory=pools, clock=FakeClock()), pools


def test_each_served_version_gets_its_own_pool(tmp_path: Path) -> None:
    make_repo(tmp_path, "version_policy: {all: true}\ninstances: 2\n", versions=(1, 2))

    async def body() -> None:
        engine, pools = engine_on_fakes(tmp_path)
        await engine.start()
        try:
            assert sorted((p.spec.ref, p.spec.version) for p in pools.built) == [
                ("m", 1), ("m", 2)]
            assert all(p.instances == 2 for p in pools.built)
            assert engine.model("m").version == 2  # the newest when none is named
            assert engine.model("m", 1).devices == ("cpu", "cpu")
            assert [(r["version"], r["state"]) for r in engine.index()] == [
                ("1", "READY"), ("2", "READY")]
        finally:
            await engine.stop(0.0)
        assert all(p.stopped for p in pools.built)

    asyncio.run(body())


def test_a_variant_is_loaded_by_its_reference_without_a_version(tmp_path: Path) -> None:
    make_repo(tmp_path, "variant: int8\n")

    async def body() -> None:
        engine, pools = engine_on_fakes(tmp_path)
        await engine.start()
        try:
            (pool,) = pools.built
            assert (pool.spec.ref, pool.spec.version) == ("m@int8", None)
            assert engine.model("m").version == 1
        finally:
            await engine.stop(0.0)

    asyncio.run(body())


def test_reload_starts_new_instances_before_stopping_the_old_and_unload_stops_them(
        tmp_path: Path) -> None:
    make_repo(tmp_path, "max_batch_size: 1\n")

    async def body() -> None:
        engine, pools = engine_on_fakes(tmp_path)
        await engine.start()
        (old,) = pools.built
        await engine.load("m")
        new = pools.built[-1]
        assert new is not old
        assert old.stopped
        assert not new.stopped
        assert engine.model_ready("m")
        task = asyncio.create_task(engine.infer("m", None, {"x": np.ones((1, WIDTH), np.float32)}))
        await settle()
        assert len(new.dispatched) == 1
        assert not old.dispatched
        new.finish()
        np.testing.assert_array_equal((await task)["y"], np.full((1, WIDTH), 3.0))
        await engine.unload("m")
        assert new.stopped
        assert engine.index() == [
            {"name": "m", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}]
        with pytest.raises(NotFoundError):
            await engine.infer("m", None, {"x": np.ones((1, WIDTH), np.float32)})
        await engine.stop(0.0)

    asyncio.run(body())


def test_a_model_whose_instances_are_all_down_is_not_ready(tmp_path: Path) -> None:
    make_repo(tmp_path, "max_batch_size: 1\n")

    async def body() -> None:
        engine, pools = engine_on_fakes(tmp_path)
        await engine.start()
        try:
            pools.built[0].crash()
            assert not engine.model_ready("m")
            assert not engine.ready()
            assert engine.index()[0]["reason"] == "no live worker"
            with pytest.raises(ModelNotReadyError):
                await engine.infer("m", None, {"x": np.ones((1, WIDTH), np.float32)})
            pools.built[0].restart()
            assert engine.ready()
        finally:
            await engine.stop(0.0)

    asyncio.run(body())


def test_the_drivers_clock_is_monotonic_unless_one_is_given(tmp_path: Path) -> None:
    import time

    assert Engine(Repository(tmp_path)).clock is time.monotonic  # test_engine_clock.py: why
    clock = FakeClock()
    assert Engine(Repository(tmp_path), clock=clock).clock is clock


def test_loading_reads_the_config_off_the_event_loop(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow config.yaml read (a large file) must not stop the loop answering health checks."""
    import time

    make_repo(tmp_path, "instances: 1\n")
    real_config = Repository.config
    ticks = 0
    during: list[int] = []  # the loop's ticks while each read was in progress

    def slow_config(self: Repository, name: str):  # type: ignore[no-untyped-def]
        before = ticks
        time.sleep(0.3)
        during.append(ticks - before)
        return real_config(self, name)

    monkeypatch.setattr(Repository, "config", slow_config)

    async def body() -> None:
        nonlocal ticks
        engine, _ = engine_on_fakes(tmp_path)

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        try:
            await engine.load("m")
        finally:
            ticker.cancel()
            await engine.stop(0.0)

    asyncio.run(body())
    # read on the loop, no tick could run during it; off the loop, ticks ran however slow the
    # machine (no count of them is asked for)
    assert during
    assert all(n > 0 for n in during), during

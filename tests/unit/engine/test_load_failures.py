"""A load that fails leaves the repository index saying what serves: a reload of the version
already served (a config override its instances refused) keeps that version's one row READY,
with why the reload failed; a new version that fails gets its own row; and no failure, a
repository that cannot be listed or a load or start cancelled included, leaves a model LOADING."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from surge.engine import Engine, PoolEvents, PoolSpec
from surge.errors import ModelLoadError, NotFoundError, SurgeError
from surge.repository import ModelConfig, Repository
from tests.unit.engine.fakes import FakeClock, FakePool, FakePools, make_repo, serving
from tests.unit.engine.test_sequences import in_loop

CONFIG = "max_batch_size: 8\nbatching: {max_queue_delay_ms: 0}\n"
# Three labels for an output of WIDTH (4) classes: the front end cannot know the output's
# classes, the started instances refuse it.
WRONG_LABELS = {"labels": ["a", "b", "c"]}


def _rows(engine: Engine) -> list[tuple[str, str]]:
    return [(row["version"], row["state"]) for row in engine.index()]


@in_loop
async def test_an_override_refused_once_instances_start_keeps_one_ready_row(
        tmp_path: Path) -> None:
    async with serving(tmp_path, CONFIG) as served:
        (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"not read by the fake pools")
        with pytest.raises(ModelLoadError, match="3 labels, but its output 'y'"):
            await served.engine.load("m", WRONG_LABELS)
        assert _rows(served.engine) == [("1", "READY")]
        (row,) = served.engine.index()
        assert "its last load failed, it serves on: model 'm': the load's config override " \
               "gives 3 labels" in row["reason"]
        assert served.engine.model_ready("m")
        [task] = await served.infer(1.0)
        served.pools.built[0].finish()  # the served version's pool (not the refused one's)
        await served.tick()
        assert np.allclose((await task)["y"], 3.0), "the served version still answers"
        await served.engine.load("m")  # a load that works clears the failure
        assert served.engine.index()[0]["reason"] == ""


class _RefusingPools(FakePools):
    """Pools whose start fails once `refuse` is set (an instance that cannot start)."""

    refuse = False

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> FakePool:
        pool = super().__call__(spec, events)
        if self.refuse:
            async def start() -> None:
                raise ModelLoadError("instance 0 of model 'm' failed to start: out of memory")
            pool.start = start  # type: ignore[method-assign]
        return pool


async def _engine(root: Path, pools: FakePools, versions: tuple[int, ...] = (1,)) -> Engine:
    make_repo(root, CONFIG, versions=versions)
    engine = Engine(Repository(root), pool_factory=pools, clock=FakeClock())
    await engine.start()
    return engine


@in_loop
async def test_a_reload_of_the_served_version_that_fails_to_start_adds_no_row(
        tmp_path: Path) -> None:
    pools = _RefusingPools()
    engine = await _engine(tmp_path, pools)
    try:
        pools.refuse = True
        with pytest.raises(ModelLoadError, match="out of memory"):
            await engine.load("m", {"instances": 1})
        assert _rows(engine) == [("1", "READY")], "no second row for version 1"
        assert "out of memory" in engine.index()[0]["reason"]
    finally:
        await engine.stop(0.0)


@in_loop
async def test_a_new_version_that_fails_gets_a_row_of_its_own(tmp_path: Path) -> None:
    pools = _RefusingPools()
    engine = await _engine(tmp_path, pools)
    try:
        pools.refuse = True
        (tmp_path / "m" / "2").mkdir()
        with pytest.raises(ModelLoadError):
            await engine.load("m")
        assert _rows(engine) == [("1", "READY"), ("2", "UNAVAILABLE")]
        assert engine.index()[0]["reason"] == ""
    finally:
        await engine.stop(0.0)


@in_loop
async def test_a_load_failing_while_the_repository_cannot_be_listed_is_not_left_loading(
        tmp_path: Path) -> None:
    root = tmp_path / "repo"
    engine = await _engine(root, FakePools())
    try:
        await engine.unload("m")
        moved = tmp_path / "moved"
        root.rename(moved)  # unmounted, removed: the folder cannot be listed
        with pytest.raises(SurgeError):
            await engine.load("m")
        moved.rename(root)
        assert _rows(engine) == [("", "UNAVAILABLE")]
        with pytest.raises(NotFoundError, match="model 'm' is not loaded"):
            engine.model("m")
        await engine.load("m")
        assert _rows(engine) == [("1", "READY")]
    finally:
        await engine.stop(0.0)


class _StalledPools(FakePools):
    """Pools whose start waits until the test lets it go (a slow load)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> FakePool:
        pool = super().__call__(spec, events)
        started = pool.start

        async def start() -> None:
            await self.gate.wait()
            await started()
        pool.start = start  # type: ignore[method-assign]
        return pool


@in_loop
async def test_a_cancelled_load_is_not_left_loading(tmp_path: Path) -> None:
    pools = _StalledPools()
    make_repo(tmp_path, CONFIG)
    engine = Engine(Repository(tmp_path), pool_factory=pools, clock=FakeClock())
    starting = asyncio.create_task(engine.start())
    for _ in range(100):  # config.yaml is read on a thread
        if pools.built:
            break
        await asyncio.sleep(0.001)
    assert _rows(engine) == [("", "LOADING")]
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    try:
        assert _rows(engine) == [("", "UNAVAILABLE")]
        assert "was cancelled before it finished" in engine.index()[0]["reason"]
        pools.gate.set()
        await engine.load("m")
        assert _rows(engine) == [("1", "READY")]
    finally:
        await engine.stop(0.0)


@in_loop
async def test_a_start_cancelled_while_config_yaml_is_read_leaves_nothing_loading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_repo(tmp_path, CONFIG)
    reading, read = threading.Event(), threading.Event()
    config = Repository.config

    def slow_config(self: Repository, name: str) -> ModelConfig:
        reading.set()
        read.wait(30)
        return config(self, name)
    monkeypatch.setattr(Repository, "config", slow_config)
    engine = Engine(Repository(tmp_path), pool_factory=FakePools(), clock=FakeClock())
    starting = asyncio.create_task(engine.start())
    await asyncio.to_thread(reading.wait, 30)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    read.set()
    try:
        assert _rows(engine) == [("", "UNAVAILABLE")]
        assert "the server stopped before the model loaded" in engine.index()[0]["reason"]
    finally:
        await engine.stop(0.0)

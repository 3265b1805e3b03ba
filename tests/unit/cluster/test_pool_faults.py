"""The Ray pool's faults without Ray: a model whose last instance is lost and cannot come back
fails what waits for it instead of leaving it to hang, and killing an actor (a wait on Ray's
GCS) never holds the event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from surge.cluster.pool import Instance, RayPool, State
from surge.cluster.site import ClusterSite
from surge.engine.instances import PoolSpec
from surge.errors import ModelLoadError, WorkerCrashedError
from surge.repository import ModelConfig
from tests.unit.engine.fakes import serving
from tests.unit.engine.test_driver import run


class Events:
    """What the pool reported."""

    def __init__(self) -> None:
        self.unavailable: list[Exception] = []
        self.restarts = 0
        self.requeued = 0
        self.failed: list[Exception | None] = []

    def on_unavailable(self, error: Exception) -> None:
        self.unavailable.append(error)

    def on_restart(self) -> None:
        self.restarts += 1

    def batch_estimate(self, size: int) -> float | None:
        return None

    def on_requeue(self, batch: object) -> None:
        self.requeued += 1

    def on_done(self, batch: object, outputs: object, error: Exception | None,
                result: object) -> None:
        self.failed.append(error)


def one_instance_pool(tmp_path: Path) -> tuple[RayPool, Events, Instance]:
    """A warm pool with one live instance; launches add instances that never load."""
    spec = PoolSpec("m", 1, ModelConfig.model_validate({
        "placement": "cluster", "cluster": {"instances": 1, "start_timeout_s": 30}}))
    events = Events()
    pool = RayPool(spec, events, ClusterSite(str(tmp_path)))  # type: ignore[arg-type]
    pool._site.kill = lambda actor: None  # type: ignore[method-assign]
    pool._warm = True
    live = Instance(1, None, 0.0, State.READY)
    pool._instances.append(live)

    def launch() -> Instance:
        pool._instances.append(Instance(len(pool._instances) + 2, None, 0.0))
        return pool._instances[-1]

    pool._launch = launch  # type: ignore[method-assign]
    return pool, events, live


def test_a_replacement_that_cannot_load_fails_what_waits_when_none_lives(
        tmp_path: Path) -> None:
    async def body() -> Events:
        pool, events, live = one_instance_pool(tmp_path)
        pool._lose(live, "ActorDiedError")
        assert events.unavailable == []  # a replacement may still come
        replacement = pool._launch()
        replacement.error = "on node 10.0.0.2: ModelLoadError: not a valid ONNX model"
        pool._failed_load(replacement)
        pool._stopping = True  # no more replacements in the background
        return events

    (error,) = asyncio.run(body()).unavailable
    assert isinstance(error, WorkerCrashedError)
    assert "model 'm' has no live instance: instance 2 could not load: on node 10.0.0.2" \
        in str(error)


def test_a_replacement_whose_node_went_away_fails_nothing_yet(tmp_path: Path) -> None:
    async def body() -> Events:
        pool, events, live = one_instance_pool(tmp_path)
        pool._lose(live, "ActorDiedError")
        replacement = pool._launch()
        replacement.error = "its actor died while loading (ActorDiedError: node died)"
        pool._failed_load(replacement, model_error=False)  # the next one may well load
        pool._stopping = True
        return events

    assert asyncio.run(body()).unavailable == []


def test_a_replacement_that_cannot_load_beside_a_live_instance_fails_nothing(
        tmp_path: Path) -> None:
    async def body() -> Events:
        pool, events, _ = one_instance_pool(tmp_path)
        extra = pool._launch()
        extra.error = "ModelLoadError"
        pool._failed_load(extra)
        pool._stopping = True
        return events

    assert asyncio.run(body()).unavailable == []


def test_no_instance_ready_within_the_start_timeout_fails_what_waits(tmp_path: Path) -> None:
    async def body() -> tuple[list[int], Events]:
        pool, events, live = one_instance_pool(tmp_path)
        lost_at = pool._loop.time()
        pool._lose(live, "channel: channel closed")
        pool._stopping = True
        counts = []
        for after in (10.0, 29.0, 31.0, 45.0, 62.0):
            pool._tick(lost_at + after)
            counts.append(len(events.unavailable))
        return counts, events

    counts, events = asyncio.run(body())
    assert counts == [0, 0, 1, 1, 2]  # after 30 s, then again after 30 s more
    assert "none became ready within 30 s (start_timeout_s)" in str(events.unavailable[0])


def test_an_instance_ready_again_stops_the_clock(tmp_path: Path) -> None:
    async def body() -> Events:
        pool, events, live = one_instance_pool(tmp_path)
        lost_at = pool._loop.time()
        pool._lose(live, "ActorDiedError")
        pool._stopping = True
        pool._empty_since = None  # as `_load` sets it when a replacement is ready
        pool._tick(lost_at + 60.0)
        return events

    assert asyncio.run(body()).unavailable == []


def test_queued_requests_fail_when_the_pool_has_nothing_left(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, "max_batch_size: 1\ninstances: 1\n") as s:
            tasks = await s.infer(1, 2, 3, 4)  # two computing, two queued
            s.pool.crash(0)
            await s.tick()
            s.model.on_unavailable(WorkerCrashedError("model 'm' has no live instance"))
            await s.tick()
            assert all(t.done() for t in tasks)
            for task in tasks[2:]:
                with pytest.raises(WorkerCrashedError, match="no live instance"):
                    task.result()
            assert s.model.scheduler.queued == 0

    run(body())


def test_killing_an_actor_does_not_hold_the_event_loop(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def slow_kill(actor: Any, no_restart: bool = True) -> None:
        time.sleep(2.0)  # a GCS that is slow or gone

    monkeypatch.setattr(ray, "kill", slow_kill)

    async def body() -> float:
        spec = PoolSpec("m", 1, ModelConfig.model_validate({"placement": "cluster"}))
        pool = RayPool(spec, Events(), ClusterSite(str(tmp_path)))  # type: ignore[arg-type]
        pool._stopping = True
        pool._instances.append(Instance(1, object(), 0.0, State.READY))
        started = time.perf_counter()
        await pool.stop()
        return time.perf_counter() - started

    assert asyncio.run(body()) < 1.0  # not the 2 s of the kill



class PendingActors:
    """A Ray actor class whose actors never finish loading; it records their options.
    `placed`: whether they are on a node (loading), or wait for one."""

    def __init__(self, placed: bool = False) -> None:
        self.launched: list[dict[str, Any]] = []
        self.placed = placed

    def options(self, **options: Any) -> PendingActors:
        self.launched.append(options)
        return self

    def remote(self, spec: object) -> SimpleNamespace:
        loop = asyncio.get_running_loop()

        def answered() -> asyncio.Future[int]:
            future = loop.create_future()
            future.set_result(1)
            return future

        ping = answered if self.placed else loop.create_future
        return SimpleNamespace(load=SimpleNamespace(remote=loop.create_future),
                               ping=SimpleNamespace(remote=ping))


def test_a_replacement_waiting_while_a_node_was_avoided_starts_afresh_when_it_is_not(
        tmp_path: Path) -> None:
    async def body() -> list[dict[str, Any]]:
        clock = [0.0]
        site = ClusterSite(str(tmp_path), clock=lambda: clock[0])
        actors = PendingActors()
        site.actor_class = lambda: actors  # type: ignore[method-assign]
        site.kill = lambda actor: None  # type: ignore[method-assign]
        site.suspect("node-a")  # it stopped answering a moment ago
        spec = PoolSpec("m", 1, ModelConfig.model_validate({"placement": "cluster"}))
        pool = RayPool(spec, Events(), site)  # type: ignore[arg-type]
        pool._launch()
        pool._tick(1.0)
        assert len(actors.launched) == 1  # still suspected: it waits
        clock[0] = 61.0  # the suspicion lapsed; Ray still keeps the actor off node-a
        pool._tick(2.0)
        assert [i.state for i in pool._instances] == [State.STARTING]
        await pool.stop()
        return actors.launched

    first, second = asyncio.run(body())
    assert first["label_selector"] == {"ray.io/node-id": "!in(node-a)"}
    assert "label_selector" not in second


def test_an_instance_loading_on_a_node_is_not_started_again_when_a_suspicion_lapses(
        tmp_path: Path) -> None:
    async def body() -> list[dict[str, Any]]:
        clock = [0.0]
        site = ClusterSite(str(tmp_path), clock=lambda: clock[0])
        actors = PendingActors(placed=True)  # on a node, loading its model
        site.actor_class = lambda: actors  # type: ignore[method-assign]
        site.kill = lambda actor: None  # type: ignore[method-assign]
        site.suspect("node-a")
        spec = PoolSpec("m", 1, ModelConfig.model_validate({"placement": "cluster"}))
        pool = RayPool(spec, Events(), site)  # type: ignore[arg-type]
        first = pool._launch()
        await asyncio.sleep(0)  # its ping is answered
        clock[0] = 61.0
        pool._tick(2.0)
        assert pool._instances == [first]
        await pool.stop()
        return actors.launched

    assert len(asyncio.run(body())) == 1


def test_reading_the_node_table_of_a_gone_gcs_fails_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: time.sleep(3.0) or [])  # the GCS is gone

    async def body() -> None:
        spec = PoolSpec("m", 1, ModelConfig.model_validate({"placement": "cluster"}))
        site = ClusterSite(str(tmp_path))
        read = site.node_table
        site.node_table = lambda: read(timeout_s=0.2)  # type: ignore[method-assign]
        with pytest.raises(ModelLoadError, match="GCS did not answer within 0.2 s"):
            await RayPool(spec, Events(), site).start()  # type: ignore[arg-type]

    started = time.perf_counter()
    asyncio.run(body())
    assert time.perf_counter() - started < 2.5  # nor does the exit wait for the 3-s read


def test_retried_requests_are_remembered_within_a_bound(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A request sent back to the queue once and then expiring there was never forgotten (a
    slow leak over node losses); one lost a second time is failed and forgotten."""
    from surge.cluster import pool as pool_module
    from surge.scheduler import Batch, Request

    monkeypatch.setattr(pool_module, "RETRIED_KEPT", 10)

    def batch(request_id: int) -> Batch:
        request = Request(request_id, {}, 1, (), 0.0)
        return Batch(request_id, (request,), (0, 1), 0.0)

    async def body() -> tuple[RayPool, Events]:
        pool, events, live = one_instance_pool(tmp_path)
        for request_id in range(100):  # each retried once, none seen again
            pool._retry_or_fail(batch(request_id), live, "node", 0.0)
        pool._retry_or_fail(batch(99), live, "node", 0.0)  # lost a second time
        return pool, events

    pool, events = run(body())
    assert events.requeued == 100
    assert [type(error) for error in events.failed] == [WorkerCrashedError]
    assert list(pool._retried) == list(range(90, 99))


def _node(alive: bool, cpus: float) -> dict[str, Any]:
    return {"NodeID": f"node-{cpus}", "Alive": alive, "Resources": {"CPU": cpus}, "Labels": {}}


@pytest.mark.parametrize(("nodes", "fails"), [
    ([], True),  # every node gone
    ([_node(False, 8.0), _node(True, 0.5)], True),  # the big one dead, a small one left
    ([_node(True, 8.0)], False),  # a replacement may yet start there
])
def test_with_no_instance_and_no_node_to_hold_one_what_waits_fails_at_once(
        tmp_path: Path, nodes: list[dict[str, Any]], fails: bool) -> None:
    """Not after start_timeout_s (30 s here): the node table is read every 2 s meanwhile."""
    reads: list[float] = []

    async def body() -> Events:
        pool, events, live = one_instance_pool(tmp_path)

        async def table() -> list[dict[str, Any]]:
            reads.append(pool._loop.time())
            return nodes

        pool._site.node_table = table  # type: ignore[method-assign]
        pool._lose(live, "ActorDiedError")
        pool._stopping = True
        start = pool._loop.time()
        for after in (0.5, 1.0, 3.0):
            pool._tick(start + after)
            await asyncio.sleep(0)  # the check runs
        return events

    events = asyncio.run(body())
    assert len(reads) == 2  # at the first tick, then once 2 s had passed since it ended
    assert len(events.unavailable) == (2 if fails else 0)
    if fails:
        assert "no live node of the Ray cluster can hold one (each needs CPU 1)" in str(
            events.unavailable[0])

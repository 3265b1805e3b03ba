"""The wait of a request for its model's load on demand, bounded by the model's queue policy
(read from config.yaml before the load) as the queue would bound it: the level's or the model's
default timeout when the request brings none or may not override it; no bound under delay."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from surge.engine import Engine
from surge.engine.load_wait import load_wait
from surge.engine.ondemand import OnDemand, ResidencyOptions
from surge.errors import InputError, ModelNotReadyError
from surge.repository.config import parse_config
from surge.repository.queueing import QueueConfig
from tests.unit.engine.fakes import WIDTH
from tests.unit.engine.test_on_demand import Models, models, until


def queue(text: dict[str, object]) -> QueueConfig:
    return parse_config({"queue": text}, "config.yaml").queue


async def slow_and_cold(m: Models) -> asyncio.Event:
    """Model a loaded once (its cold start measured at 2 s of the engine's clock), evicted; its
    next load waits for the event returned (so that it is still loading when a request asks)."""
    m.pools.load_s["a"] = 2.0
    await m.answer("a")
    assert await m.engine.evict("a")
    gate = m.pools.gates["a"] = asyncio.Event()
    return gate


def send(m: Models, priority: int = 0, timeout_us: int | None = None
         ) -> asyncio.Task[dict[str, np.ndarray]]:
    return asyncio.create_task(m.engine.infer("a", None, {"x": np.ones((1, WIDTH), np.float32)},
                                              priority=priority, timeout_us=timeout_us))


def test_the_bound_follows_the_levels_policy_as_the_queue_does() -> None:
    policy = queue({"default_timeout_ms": 100, "priorities": {
        2: {"default_timeout_ms": 40}, 3: {"allow_timeout_override": False},
        4: {"timeout_action": "delay"}}})
    assert load_wait(policy, 0, None).seconds == pytest.approx(0.1)  # the model's default
    assert load_wait(policy, 0, 5_000).seconds == pytest.approx(0.005)  # its own wins
    assert load_wait(policy, 2, None).seconds == pytest.approx(0.04)  # the level's default
    ignored = load_wait(policy, 3, 5_000)  # its own is ignored at that level
    assert ignored.seconds == pytest.approx(0.1)
    assert "allow_timeout_override is false" in ignored.note
    assert load_wait(policy, 4, 5_000).seconds is None  # a late request is kept, not failed
    assert load_wait(queue({}), 0, None).seconds is None  # no default: no bound
    assert load_wait(None, 0, 5_000).seconds == pytest.approx(0.005)  # config unreadable


def test_what_is_left_goes_on_to_the_queue() -> None:
    policy = queue({"default_timeout_ms": 100, "priorities": {4: {"timeout_action": "delay"}}})
    assert load_wait(policy, 0, 5_000).left_us(5_000, 0.002) == 3_000
    assert load_wait(policy, 0, 5_000).left_us(5_000, 0.01) == 1  # never 0: no deadline
    assert load_wait(policy, 0, None).left_us(None, 0.05) is None  # the queue's default
    assert load_wait(policy, 4, 5_000).left_us(5_000, 0.01) is None  # delay: the level's


def test_a_default_timeout_bounds_the_wait_of_a_request_without_one(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "queue: {default_timeout_ms: 1000}\n"}) as m:
            await slow_and_cold(m)
            with pytest.raises(ModelNotReadyError, match=r"'a' is loading: its cold start takes "
                               r"about 2.00 s, more than the model's queue.default_timeout_ms "
                               r"\(1000 ms\) allows"):
                await send(m)

    asyncio.run(body())


def test_a_timeout_the_level_ignores_does_not_lengthen_the_wait(tmp_path: Path) -> None:
    config = "queue: {default_timeout_ms: 1000, allow_timeout_override: false}\n"
    async def body() -> None:
        async with models(tmp_path, {"a": config}) as m:
            await slow_and_cold(m)
            with pytest.raises(ModelNotReadyError, match=r"more than the model's queue."
                               r"default_timeout_ms \(1000 ms\) allows \(the request's "
                               r"`timeout` is ignored: allow_timeout_override is false\)"):
                await send(m, timeout_us=30_000_000)

    asyncio.run(body())


def test_each_priority_level_bounds_its_own_requests(tmp_path: Path) -> None:
    config = "queue: {priorities: {2: {default_timeout_ms: 1000}}}\n"
    async def body() -> None:
        async with models(tmp_path, {"a": config}) as m:
            gate = await slow_and_cold(m)
            with pytest.raises(ModelNotReadyError, match=r"the default timeout of priority 2 "
                               r"\(1000 ms\) allows"):
                await send(m, priority=2)
            patient = send(m)  # the default level has no default timeout: it waits
            gate.set()
            await m.finish("a", patient)
            assert float((await patient)["y"][0, 0]) == 3.0

    asyncio.run(body())


def test_a_level_that_delays_late_requests_waits_for_the_load(tmp_path: Path) -> None:
    config = "queue: {default_timeout_ms: 1000, timeout_action: delay}\n"
    async def body() -> None:
        async with models(tmp_path, {"a": config}) as m:
            gate = await slow_and_cold(m)
            task = send(m, timeout_us=1_000_000)  # shorter than the load: kept, not refused
            gate.set()
            await m.finish("a", task)
            assert float((await task)["y"][0, 0]) == 3.0

    asyncio.run(body())


def test_a_default_timeout_cuts_a_load_that_does_not_finish(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "queue: {default_timeout_ms: 20}\n"}) as m:
            m.pools.gates["a"] = asyncio.Event()  # the load never finishes on its own
            task = send(m)
            await until(task.done)
            with pytest.raises(ModelNotReadyError, match=r"'a' is loading: not loaded within "
                               r"the model's queue.default_timeout_ms \(20 ms\)"):
                await task
            m.pools.gates["a"].set()

    asyncio.run(body())


@pytest.mark.parametrize(("priority", "timeout_us", "message"), [
    (-1, None, "priority must be an integer"), (0, -5, "timeout must be >= 0")])
def test_bad_options_for_a_cold_model_are_refused_before_any_load(
        tmp_path: Path, priority: int, timeout_us: int | None, message: str) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            with pytest.raises(InputError, match=message):
                await send(m, priority=priority, timeout_us=timeout_us)
            assert m.pools.starts["a"] == 0

    asyncio.run(body())


def test_a_queue_policy_that_cannot_be_read_in_time_does_not_outlast_the_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = threading.Event()  # config.yaml's reading for the policy stalls (a hung disk)
    queue_of = OnDemand._queue_of
    monkeypatch.setattr(OnDemand, "_queue_of", lambda self, name: (
        read.wait(30), queue_of(self, name))[1])
    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            m.pools.gates["a"] = asyncio.Event()
            try:
                task = send(m, timeout_us=20_000)
                await until(task.done, timeout_s=5.0)
                with pytest.raises(ModelNotReadyError, match=r"'a' is loading: not loaded "
                                   r"within the request's timeout of 20 ms"):
                    await task
            finally:
                read.set()
                m.pools.gates["a"].set()

    asyncio.run(body())


def test_a_pipelines_queue_section_does_not_bound_the_wait_for_its_load(tmp_path: Path) -> None:
    from tests.unit.pipeline.test_served import AutoPool, repository, values

    gate = asyncio.Event()  # its step model's load waits for the test

    class GatedPool(AutoPool):
        async def start(self) -> None:
            await gate.wait()
            await super().start()

    repo = repository(tmp_path)  # the pipeline ignores its queue section once loaded
    with (tmp_path / "p" / "config.yaml").open("a") as config:
        config.write("queue: {default_timeout_ms: 20}\n")
    async def body() -> None:
        engine = Engine(repo, pool_factory=GatedPool, residency=ResidencyOptions("on-demand"))
        await engine.start()
        try:
            task = asyncio.create_task(engine.infer("p", None, values(1.0)))
            await asyncio.sleep(0.1)  # well past the 20 ms: no bound of the pipeline's
            gate.set()
            assert (await task)["total"].shape == (1, 1)
        finally:
            gate.set()
            await engine.stop(grace_s=0.0)

    asyncio.run(body())


def test_a_request_still_reading_the_policy_is_not_evicted_from_under(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = threading.Event()  # a's policy comes late (its thread's turn comes late)
    queue_of = OnDemand._queue_of
    monkeypatch.setattr(OnDemand, "_queue_of", lambda self, name: (
        read.wait(30) if name == "a" else None, queue_of(self, name))[1])
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": ""}, budget_mb=150) as m:
            try:
                first = m.send("a")
                await asyncio.sleep(0.2)  # time enough for a's load to have ended, had it begun
                await m.answer("b")  # room for b alone: a, had it loaded, would be evicted
                read.set()
                await m.finish("a", first)
                assert (await first)["y"].shape == (1, WIDTH)  # before: 404, a not loaded
            finally:
                read.set()

    asyncio.run(body())

"""No room for a batch on the front end's side (a full /dev/shm, a full Ray object store): that
batch fails with 503, as a local worker's does, and the instance it was meant for serves on.
Before, the channel's new slot failed as a 500, and a full object store read as a lost actor:
the instance was killed and the batch retried on another, killed in turn."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.cluster import shared
from surge.cluster.channel import Channel, ChannelServer
from surge.cluster.pool import Instance, RayPool, State
from surge.cluster.site import ClusterSite
from surge.engine.instances import PoolSpec
from surge.errors import http_status
from surge.repository import ModelConfig
from surge.scheduler import Batch, Request
from tests.unit.cluster.test_channel import SECRET, FakeActor, plus_one

pytest.importorskip("ray")


class Events:
    """What the pool reported for each batch."""

    def __init__(self) -> None:
        self.errors: list[Exception | None] = []
        self.requeued = 0

    def batch_estimate(self, size: int) -> float | None:
        return None

    def on_requeue(self, batch: object) -> None:
        self.requeued += 1

    def on_restart(self) -> None:
        pass

    def on_done(self, batch: object, outputs: object, error: Exception | None,
                result: object) -> None:
        self.errors.append(error)


def one_instance(tmp_path: Path) -> tuple[RayPool, Events, Instance]:
    events = Events()
    pool = RayPool(PoolSpec("m", 1, ModelConfig()), events,  # type: ignore[arg-type]
                   ClusterSite(str(tmp_path)))
    pool._site.kill = lambda actor: None  # type: ignore[method-assign]
    instance = Instance(1, FakeActor(channel_fails=True), 0.0, State.READY)
    pool._instances.append(instance)
    return pool, events, instance


def batch_of(rows: int) -> Batch:
    x = np.ones((rows, 1024), np.float32)  # 4 KiB a row
    request = Request(1, {"x": x}, rows, (), 0.0)
    return Batch(1, (request,), (0, rows), 0.0)


def test_a_full_object_store_fails_the_batch_not_the_instance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray.exceptions import ObjectStoreFullError

    def full(value: Any) -> Any:
        raise ObjectStoreFullError("the object store is full")

    monkeypatch.setattr(ray, "put", full)

    async def body() -> tuple[Events, Instance, RayPool]:
        pool, events, instance = one_instance(tmp_path)
        pool.dispatch(batch_of(64))  # 256 KiB: through the object store
        while not events.errors and not events.requeued:
            await asyncio.sleep(0.01)
        pool._stopping = True
        return events, instance, pool

    events, instance, pool = asyncio.run(body())
    assert events.requeued == 0
    assert instance.state is State.READY
    assert pool.live == [instance]
    [error] = events.errors
    assert error is not None
    assert http_status(error) == 503
    assert "no room in the Ray object store for a batch of 262144 bytes" in str(error)


def test_a_full_dev_shm_fails_the_batch_with_503_and_the_channel_serves_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = shared.Slot

    def no_space(size: int) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def body() -> tuple[Events, Instance]:
        pool, events, instance = one_instance(tmp_path)
        server = ChannelServer(plus_one, SECRET, "127.0.0.1")
        instance.channel = await Channel.open(*server.address, SECRET, 5.0, shared=True)
        monkeypatch.setattr(shared, "Slot", no_space)
        pool.dispatch(batch_of(1))
        while not events.errors:
            await asyncio.sleep(0.01)
        monkeypatch.setattr(shared, "Slot", made)  # room again: the next batch goes through
        pool.dispatch(batch_of(1))
        while len(events.errors) < 2:
            await asyncio.sleep(0.01)
        pool._stopping = True
        instance.channel.close()
        return events, instance

    events, instance = asyncio.run(body())
    first, second = events.errors
    assert first is not None
    assert http_status(first) == 503
    assert "/dev/shm is full" in str(first)
    assert second is None
    assert instance.state is State.READY


def test_an_output_slot_that_cannot_grow_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs that came on the socket grow the slot for the next batch: with /dev/shm full the
    release raised instead, out of the task that had answered the batch, and lost the pair."""
    slots = shared.FrontSlots()
    pair = slots.take()
    kept = pair.outputs

    def no_space(size: int) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shared, "Slot", no_space)
    slots.give(pair, outputs_needed=10 * kept.size)
    assert pair.outputs is kept
    assert slots.take() is pair
    slots.close()

"""A sequence dropped with its model (unloaded, evicted to make room, reloaded): its next request
is told which happened and when, through the Engine, on scripted pools of a sequence model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from surge.engine import Engine, PoolEvents, PoolSpec
from surge.engine.ondemand import ResidencyOptions
from surge.engine.sequences import (
    EVICTED,
    UNLOADED,
    SequenceFlags,
    open_sequences,
    request_sequence,
)
from surge.errors import InputError, ModelNotReadyError
from surge.repository import Repository
from surge.runtimes.base import Signature, TensorSpec
from surge.scheduler import Batch
from surge.workers.messages import BatchDone
from surge.workers.pool import BatchResult
from tests.unit.engine.fakes import WIDTH, FakeClock, FakePool, make_repo, settle
from tests.unit.engine.test_sequences import SIGNATURE as STORE_SIGNATURE
from tests.unit.engine.test_sequences import Model, config, send

SIGNATURE = Signature(
    (TensorSpec("x", "FP32", (-1, WIDTH)), TensorSpec("state_in", "FP32", (-1, WIDTH))),
    (TensorSpec("y", "FP32", (-1, WIDTH)), TensorSpec("state_out", "FP32", (-1, WIDTH))),
    batched=True, max_batch_size=8, platform="fake")
CONFIG = ("max_batch_size: 8\nbatching: {max_queue_delay_ms: 0}\nsequence_batching: "
          "{max_sequence_idle_ms: 600000, state: [{input: state_in, output: state_out}]}\n")
WHEN = r"at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


class SequencePool(FakePool):
    """The recurrent model y = state_in + x (state_out = y), answered when the test says."""

    async def start(self) -> None:
        await super().start()
        self.signature = SIGNATURE

    def answer(self) -> Batch:
        batch = self.held[0].popleft()
        y = np.concatenate([r.inputs["x"] + r.inputs["state_in"] for r in batch.requests])
        done = BatchDone(batch.id, input_ns=1, infer_ns=1, output_ns=1)
        self.events.on_done(batch, {"y": y, "state_out": y}, None, BatchResult(done, 1e-6))
        return batch


class Sequences:
    def __init__(self, engine: Engine, pools: list[SequencePool]) -> None:
        self.engine, self.pools = engine, pools

    async def step(self, sequence_id: int, start: bool = False) -> float:
        """One request of the sequence (value 1), answered; its y."""
        token = request_sequence.set(SequenceFlags(sequence_id, start=start))
        try:
            task = asyncio.create_task(self.engine.infer(
                "m", None, {"x": np.ones((1, WIDTH), np.float32)}))
        finally:
            request_sequence.reset(token)
        for _ in range(100):  # a load on demand reads config.yaml on a thread
            await settle()
            if task.done() or (self.pools and self.pools[-1].held[0]):
                break
            await asyncio.sleep(0.001)
        if not task.done():
            self.pools[-1].answer()
            await settle()
        return float((await task)["y"].flat[0])


@asynccontextmanager
async def sequence_model(root: Path, load: str = "eager") -> AsyncIterator[Sequences]:
    make_repo(root, CONFIG)
    pools: list[SequencePool] = []

    def factory(spec: PoolSpec, events: PoolEvents) -> SequencePool:
        pools.append(SequencePool(spec, events))
        return pools[-1]

    engine = Engine(Repository(root), pool_factory=factory, clock=FakeClock(),
                    residency=ResidencyOptions(load))  # type: ignore[arg-type]
    await engine.start()
    try:
        yield Sequences(engine, pools)
    finally:
        await engine.stop(grace_s=0.0)


def test_a_sequence_of_an_unloaded_model_is_told_so_once_it_is_loaded_again(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with sequence_model(tmp_path) as m:
            assert await m.step(7, start=True) == 1.0
            assert await m.step(7) == 2.0
            await m.engine.unload("m")
            await m.engine.load("m")
            with pytest.raises(InputError, match=f"sequence 7 of model 'm' was dropped with its "
                               f"state when the model was unloaded {WHEN}.*send sequence_start"):
                await m.step(7)
            assert await m.step(7, start=True) == 1.0

    asyncio.run(body())


def test_a_sequence_of_an_evicted_model_is_told_so_by_the_load_its_request_made(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with sequence_model(tmp_path, load="on-demand") as m:
            assert await m.step(7, start=True) == 1.0
            assert await m.engine.evict("m")
            with pytest.raises(InputError, match=f"sequence 7 of model 'm' was dropped with its "
                               f"state when the model was evicted to make room \\(memory "
                               f"budget, least recently used\\) {WHEN}"):
                await m.step(7)
            assert len(m.pools) == 2  # the request loaded it again

    asyncio.run(body())


def test_a_reload_says_when_and_an_earlier_drop_keeps_its_reason(tmp_path: Path) -> None:
    async def body() -> None:
        async with sequence_model(tmp_path) as m:
            await m.step(7, start=True)
            await m.engine.unload("m")
            await m.engine.load("m")
            await m.step(8, start=True)
            await m.engine.load("m")  # a reload: 8 was live, 7 already gone
            with pytest.raises(InputError, match=f"when the model was reloaded {WHEN}"):
                await m.step(8)
            with pytest.raises(InputError, match=f"when the model was unloaded {WHEN}"):
                await m.step(7)

    asyncio.run(body())


@pytest.mark.parametrize(("why", "said"), [(UNLOADED, "unloaded"),
                                            (EVICTED, "evicted to make room")])
def test_a_request_waiting_for_its_sequence_as_the_model_goes_is_told_why(
        why: str, said: str) -> None:
    async def body() -> None:
        store = open_sequences("m", config(), STORE_SIGNATURE, FakeClock())
        assert store is not None
        model = Model()
        await send(store, model, 7, 1.0, start=True)
        model.gate = asyncio.Event()
        running = asyncio.create_task(send(store, model, 7, 1.0))
        waiting = asyncio.create_task(send(store, model, 7, 1.0))
        await settle()
        store.departures(why, 0.0)  # the engine marks the store as the model goes
        store.close()
        model.gate.set()
        await running
        with pytest.raises(ModelNotReadyError, match=f"model 'm' was {said}.* at 1970-01-01 "
                           "00:00:00 UTC before this request of sequence 7 ran"):
            await waiting

    asyncio.run(body())


def test_what_a_model_keeps_of_its_dropped_sequences_is_bounded_by_max_sequences() -> None:
    async def body() -> None:
        clock = FakeClock()
        store = open_sequences("m", config(), STORE_SIGNATURE, clock)  # max_sequences: 2
        assert store is not None
        model = Model()
        for sequence_id in (1, 2):  # they idle out: remembered as gone
            await send(store, model, sequence_id, 1.0, start=True)
        clock.advance(5.0)
        for sequence_id in ("a", "b"):  # live as the model goes
            await send(store, model, sequence_id, 1.0, start=True)
        kept = store.departures(UNLOADED, 0.0)  # what the engine keeps until the next load
        store.close()
        assert list(kept) == ["a", "b"]  # the most recent, as many as one store remembers
        assert {drop.why for drop in kept.values()} == {UNLOADED}

    asyncio.run(body())

"""The sequence store under hostile use: a request waiting behind its sequence's earlier ones
keeps to its own timeout; a request waiting across an unload or reload is told why it failed;
idle expiry costs what expires, not every live sequence; a string sequence_id is bounded."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from surge.engine.sequences import (
    MAX_ID_CHARS,
    MIN_TICK_S,
    DroppedSequences,
    SequenceStore,
    open_sequences,
)
from surge.errors import (
    ConfigError,
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    QueueFullError,
)
from tests.unit.engine.fakes import FakeClock
from tests.unit.engine.test_sequences import SIGNATURE, Model, config, in_loop, send


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Iterator[SequenceStore]:
    made = open_sequences("m", config(), SIGNATURE, clock)
    assert made is not None
    yield made
    made.close()


def roomy(clock: FakeClock, max_sequences: int) -> SequenceStore:
    made = open_sequences("m", config(
        "sequence_batching: {max_sequence_idle_ms: 1000, max_sequences: "
        f"{max_sequences}, state: [{{input: state_in, output: state_out}}]}}\n"),
        SIGNATURE, clock)
    assert made is not None
    return made


# -- deadlines ---------------------------------------------------------------------------------
@in_loop
async def test_a_request_behind_a_busy_sequence_is_refused_when_its_timeout_passes(
        store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 3, 1.0, start=True)
    model.gate = asyncio.Event()
    busy = asyncio.create_task(send(store, model, 3, 1.0))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceededError, match="timeout of 1000 us passed while it waited "
                       "for the earlier requests of sequence 3 of model 'm'"):
        await send(store, model, 3, 100.0, timeout_us=1000)
    model.gate.set()
    assert await busy == [2.0, 2.0]
    assert await send(store, model, 3, 1.0) == [3.0, 3.0], "the late one changed nothing"
    assert len(model.calls) == 3, "the late one never reached the model"


@in_loop
async def test_the_model_queue_gets_the_timeout_the_wait_left(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 4, 1.0, start=True, timeout_us=5_000_000)
    await send(store, model, 4, 1.0)
    left, unbounded = model.timeouts
    assert left is not None
    assert 1 <= left <= 5_000_000
    assert unbounded is None


@in_loop
async def test_a_client_gone_while_waiting_frees_its_place(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 5, 1.0, start=True)
    model.gate = asyncio.Event()
    busy = asyncio.create_task(send(store, model, 5, 1.0))
    gone = asyncio.create_task(send(store, model, 5, 100.0, timeout_us=60_000_000))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    model.gate.set()
    assert await busy == [2.0, 2.0]
    assert await send(store, model, 5, 1.0) == [3.0, 3.0]


# -- unload and reload ---------------------------------------------------------------------------
@in_loop
async def test_a_request_waiting_across_an_unload_is_told_the_state_went(
        store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 6, 1.0, start=True)
    model.gate = asyncio.Event()
    busy = asyncio.create_task(send(store, model, 6, 1.0))
    waiting = asyncio.create_task(send(store, model, 6, 1.0))
    await asyncio.sleep(0)
    store.close()
    model.gate.set()
    assert await busy == [2.0, 2.0], "an accepted request in flight is answered"
    with pytest.raises(ModelNotReadyError, match="model 'm' was unloaded or reloaded before "
                       "this request of sequence 6 ran.*send sequence_start"):
        await waiting
    assert len(model.calls) == 2, "the waiting one was not computed on a dropped state"


# -- idle expiry ---------------------------------------------------------------------------------
class CountingDict(OrderedDict[Any, Any]):
    """The live sequences, counting how many of them a scan looks at."""

    looked = 0

    def items(self) -> Any:
        for item in super().items():
            self.looked += 1
            yield item


@in_loop
async def test_a_request_does_not_scan_every_live_sequence(clock: FakeClock) -> None:
    store = roomy(clock, 500)
    model = Model()
    for sequence_id in range(1, 401):
        await send(store, model, sequence_id, 1.0, start=True)
    live = store._live = CountingDict(store._live)
    assert await send(store, model, 1, 1.0) == [2.0, 2.0]
    assert live.looked <= 2, "only the least recently used sequence was due to be looked at"
    clock.advance(2.0)
    await send(store, model, 1000, 1.0, start=True)
    assert store.live == 1, "every idle sequence expired"
    store.close()


@in_loop
async def test_a_request_in_flight_does_not_hold_back_the_expiry_of_others(
        clock: FakeClock) -> None:
    store = roomy(clock, 8)
    model = Model()
    for sequence_id in (1, 2, 3):
        await send(store, model, sequence_id, 1.0, start=True)
    model.gate = asyncio.Event()
    busy = asyncio.create_task(send(store, model, 1, 1.0))  # the least recently used
    await asyncio.sleep(0)
    clock.advance(2.0)
    assert store.expire(clock()) == [2, 3]
    model.gate.set()
    assert await busy == [2.0, 2.0]
    store.close()


# -- ids -------------------------------------------------------------------------------------------
@in_loop
async def test_a_string_sequence_id_is_bounded(store: SequenceStore) -> None:
    model = Model()
    with pytest.raises(InputError, match=f"'sequence_id' of a request to model 'm' is a string "
                       f"of {MAX_ID_CHARS + 1} characters, more than the {MAX_ID_CHARS}"):
        await send(store, model, "s" * (MAX_ID_CHARS + 1), 1.0, start=True)
    assert store.live == 0
    assert not model.calls
    longest = "s" * MAX_ID_CHARS
    assert await send(store, model, longest, 1.0, start=True, end=True) == [1.0, 1.0]


@in_loop
async def test_a_sequence_dropped_by_a_reload_is_told_so(clock: FakeClock) -> None:
    before, after = roomy(clock, 8), roomy(clock, 8)
    model = Model()
    await send(before, model, 21, 1.0, start=True)
    DroppedSequences().carry("m", [SimpleNamespace(sequences=after)],
                             [SimpleNamespace(sequences=before)])
    before.close()
    with pytest.raises(InputError, match="sequence 21 of model 'm' was dropped with its state "
                       "when the model was reloaded.*send sequence_start"):
        await send(after, model, 21, 1.0)
    with pytest.raises(InputError, match="sequence 22 to model 'm' must specify the "
                       "sequence_start flag"):
        await send(after, model, 22, 1.0)
    assert await send(after, model, 21, 1.0, start=True) == [1.0, 1.0]
    after.close()


@in_loop
async def test_a_tiny_idle_time_does_not_spin_the_expiry_timer(clock: FakeClock) -> None:
    store = open_sequences("m", config(
        "sequence_batching: {max_sequence_idle_ms: 0.001, state: [{input: state_in, "
        "output: state_out}]}\n"), SIGNATURE, clock)
    assert store is not None
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    armed = loop.call_later

    def recorded(delay: float, *args: Any) -> asyncio.TimerHandle:
        delays.append(delay)
        return armed(delay, *args)

    loop.call_later = recorded  # type: ignore[method-assign]
    try:
        await send(store, Model(), 1, 1.0, start=True)
    finally:
        del loop.call_later
    assert delays == [MIN_TICK_S], "the timer's period has a floor"
    store.close()


def test_an_idle_time_below_a_microsecond_fails_the_config() -> None:
    with pytest.raises(ConfigError, match="max_sequence_idle_ms"):
        config("sequence_batching: {state: [{input: a, output: b}], "
               "max_sequence_idle_ms: 0.0004}\n")


# -- max_sequences -------------------------------------------------------------------------------
@in_loop
async def test_a_refused_start_is_told_when_the_next_slot_idles_out(
        store: SequenceStore, clock: FakeClock) -> None:
    model = Model()
    await send(store, model, 1, 1.0, start=True)
    clock.advance(0.6)
    await send(store, model, 2, 1.0, start=True)
    clock.advance(0.1)
    with pytest.raises(QueueFullError, match="max_sequences") as refused:
        await send(store, model, 3, 1.0, start=True)
    assert refused.value.retry_after_s == pytest.approx(0.3), "sequence 1 idles out in 0.3 s"


# -- the gauge -----------------------------------------------------------------------------------
@in_loop
async def test_two_versions_of_a_model_add_up_in_its_gauge(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    gauges = Gauge("live", "live sequences", ["model"], registry=registry)
    versions = [open_sequences("m", config(), SIGNATURE, clock, gauges) for _ in range(2)]
    first, second = versions
    assert first is not None
    assert second is not None
    model = Model()
    await send(first, model, 1, 1.0, start=True)
    await send(first, model, 2, 1.0, start=True)
    await send(second, model, 1, 1.0, start=True)
    assert registry.get_sample_value("live", {"model": "m"}) == 3
    await send(second, model, 1, 1.0, end=True)
    assert registry.get_sample_value("live", {"model": "m"}) == 2
    first.close()
    assert registry.get_sample_value("live", {"model": "m"}) == 0
    second.close()

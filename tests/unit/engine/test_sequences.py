"""The sequence batcher's state store: the state carried from one request of a sequence to the
next, per-sequence order under concurrency, start, end, idle expiry on a fake clock, failures,
max_sequences; the state pairs checked against the model's signature; the V2 parameters."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import numpy as np
import pytest

from surge.engine.sequences import (
    SequenceFlags,
    SequenceStore,
    open_sequences,
    request_sequence,
)
from surge.errors import ConfigError, InputError, QueueFullError
from surge.protocol.metadata import model_config, model_metadata
from surge.protocol.types import parse_sequence
from surge.repository.config import ModelConfig, parse_config
from surge.runtimes.base import Signature, TensorSpec
from tests.unit.engine.fakes import FakeClock

SIGNATURE = Signature(
    (TensorSpec("x", "FP32", (-1, 2)), TensorSpec("state_in", "FP32", (-1, 2))),
    (TensorSpec("y", "FP32", (-1, 2)), TensorSpec("state_out", "FP32", (-1, 2))),
    batched=True, max_batch_size=8, platform="fake")
STATE = "sequence_batching: {max_sequence_idle_ms: 1000, max_sequences: 2, state: [{input: " \
        "state_in, output: state_out}]}\n"


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop (as the other engine tests do)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def config(text: str = STATE) -> ModelConfig:
    import yaml

    return parse_config(yaml.safe_load(text), "m/config.yaml")


class Model:
    """The recurrent model `y = state_in + x; state_out = y` as the model's queue computes it:
    each call waits until the test releases it (`gate`), or fails when told to."""

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []
        self.gate: asyncio.Event | None = None
        self.fail_next = False
        self.running = 0
        self.most_running = 0
        self.timeouts: list[int | None] = []  # the timeout each call had left

    async def __call__(self, inputs: dict[str, np.ndarray], outputs: list[str] | None,
                       timeout_us: int | None = None) -> dict[str, np.ndarray]:
        self.calls.append(inputs)
        self.timeouts.append(timeout_us)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_next:
                self.fail_next = False
                raise InputError("the model refused it")
            y = inputs["state_in"] + inputs["x"]
            return {"y": y, "state_out": y.copy()}
        finally:
            self.running -= 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Iterator[SequenceStore]:
    made = open_sequences("m", config(), SIGNATURE, clock)
    assert made is not None
    yield made
    made.close()


async def send(store: SequenceStore, model: Model, sequence_id: int | str, value: float,
               start: bool = False, end: bool = False, timeout_us: int | None = None
               ) -> list[float]:
    token = request_sequence.set(SequenceFlags(sequence_id, start, end))
    try:
        answer = await store.infer({"x": np.full((1, 2), value, np.float32)}, None, model,
                                   timeout_us)
    finally:
        request_sequence.reset(token)
    assert set(answer) == {"y"}, "the state output is the server's own"
    return [float(v) for v in answer["y"][0]]


# -- the state -----------------------------------------------------------------------------------
@in_loop
async def test_the_state_of_one_request_is_the_state_input_of_the_next(
        store: SequenceStore) -> None:
    model = Model()
    assert await send(store, model, 7, 1.0, start=True) == [1.0, 1.0]
    assert await send(store, model, 7, 2.0) == [3.0, 3.0]
    assert await send(store, model, 7, 4.0, end=True) == [7.0, 7.0]
    assert model.calls[0]["state_in"].tolist() == [[0.0, 0.0]], "zeros to start"
    assert model.calls[0]["state_in"].dtype == np.float32


@in_loop
async def test_two_interleaved_sequences_keep_their_own_states(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 1, 1.0, start=True)
    await send(store, model, "two", 10.0, start=True)
    assert await send(store, model, 1, 1.0) == [2.0, 2.0]
    assert await send(store, model, "two", 10.0) == [20.0, 20.0]
    assert store.live == 2


@in_loop
async def test_requests_of_one_sequence_run_in_order_others_together(
        store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 1, 1.0, start=True)
    await send(store, model, 2, 100.0, start=True)
    model.gate = asyncio.Event()
    first = asyncio.create_task(send(store, model, 1, 2.0))
    second = asyncio.create_task(send(store, model, 1, 3.0))
    other = asyncio.create_task(send(store, model, 2, 5.0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert model.running == 2, "sequence 1's second request waits; sequence 2's runs"
    model.gate.set()
    assert await first == [3.0, 3.0]
    assert await second == [6.0, 6.0], "it saw the state the first one left"
    assert await other == [105.0, 105.0]


@in_loop
async def test_a_start_for_a_running_sequence_begins_it_again(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 3, 5.0, start=True)
    assert await send(store, model, 3, 1.0, start=True) == [1.0, 1.0]
    assert await send(store, model, 3, 1.0) == [2.0, 2.0]


@in_loop
async def test_end_frees_the_sequence(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 4, 1.0, start=True)
    await send(store, model, 4, 1.0, end=True)
    assert store.live == 0
    with pytest.raises(InputError, match="sequence 4 .* must specify the sequence_start flag"):
        await send(store, model, 4, 1.0)


@in_loop
async def test_a_request_waiting_behind_the_end_is_refused(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 4, 1.0, start=True)
    model.gate = asyncio.Event()
    ending = asyncio.create_task(send(store, model, 4, 1.0, end=True))
    late = asyncio.create_task(send(store, model, 4, 1.0))
    await asyncio.sleep(0)
    model.gate.set()
    assert await ending == [2.0, 2.0]
    with pytest.raises(InputError, match="sequence_start"):
        await late
    assert store.live == 0


# -- failures --------------------------------------------------------------------------------
@in_loop
async def test_a_failed_request_leaves_the_state_unchanged(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 5, 1.0, start=True)
    model.fail_next = True
    with pytest.raises(InputError, match="refused"):
        await send(store, model, 5, 50.0)
    assert await send(store, model, 5, 1.0) == [2.0, 2.0]
    model.fail_next = True
    with pytest.raises(InputError):
        await send(store, model, 5, 1.0, end=True)
    assert await send(store, model, 5, 1.0) == [3.0, 3.0], "a failed end ends nothing"


@in_loop
async def test_a_failed_start_starts_nothing(store: SequenceStore) -> None:
    model = Model()
    model.fail_next = True
    with pytest.raises(InputError, match="refused"):
        await send(store, model, 6, 1.0, start=True)
    assert store.live == 0
    with pytest.raises(InputError, match="sequence_start"):
        await send(store, model, 6, 1.0)


@in_loop
async def test_a_cancelled_request_leaves_the_state(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 8, 1.0, start=True)
    model.gate = asyncio.Event()
    gone = asyncio.create_task(send(store, model, 8, 50.0))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    model.gate.set()
    assert await send(store, model, 8, 1.0) == [2.0, 2.0]


# -- refusals ----------------------------------------------------------------------------------
@in_loop
async def test_a_request_without_a_sequence_id_is_refused(store: SequenceStore) -> None:
    model = Model()
    with pytest.raises(InputError, match="must specify a non-zero or non-empty sequence_id"):
        await store.infer({"x": np.zeros((1, 2), np.float32)}, None, model)
    for empty in (0, ""):
        with pytest.raises(InputError, match="sequence_id"):
            await send(store, model, empty, 1.0, start=True)
    assert not model.calls


@in_loop
async def test_the_state_tensors_are_the_servers_own(store: SequenceStore) -> None:
    model = Model()
    token = request_sequence.set(SequenceFlags(9, start=True))
    try:
        with pytest.raises(InputError, match="input 'state_in' .* implicit sequence state"):
            await store.infer({"x": np.zeros((1, 2), np.float32),
                               "state_in": np.ones((1, 2), np.float32)}, None, model)
        with pytest.raises(InputError, match="output 'state_out' .* implicit sequence state"):
            await store.infer({"x": np.zeros((1, 2), np.float32)}, ["y", "state_out"], model)
        with pytest.raises(InputError, match="batch-size 1 .* got 3"):
            await store.infer({"x": np.zeros((3, 2), np.float32)}, None, model)
        answer = await store.infer({"x": np.ones((1, 2), np.float32)}, ["y"], model)
    finally:
        request_sequence.reset(token)
    assert list(answer) == ["y"], "the state output was asked for and taken off"


@in_loop
async def test_more_than_max_sequences_is_refused_until_one_ends(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 1, 1.0, start=True)
    await send(store, model, 2, 1.0, start=True)
    with pytest.raises(QueueFullError, match="2 live sequences.*max_sequences") as refused:
        await send(store, model, 3, 1.0, start=True)
    assert refused.value.retry_after_s == 1.0
    await send(store, model, 1, 1.0, end=True)
    assert await send(store, model, 3, 1.0, start=True) == [1.0, 1.0]


# -- idle expiry -----------------------------------------------------------------------------
@in_loop
async def test_an_idle_sequence_is_dropped_and_its_next_request_told_why(
        store: SequenceStore, clock: FakeClock) -> None:
    model = Model()
    await send(store, model, 11, 1.0, start=True)
    await send(store, model, 12, 1.0, start=True)
    clock.advance(0.9)
    await send(store, model, 12, 1.0)  # 12 is used again; 11 is not
    clock.advance(0.2)
    assert store.expire(clock()) == [11]
    assert store.live == 1
    with pytest.raises(InputError, match="sequence 11 of model 'm' timed out: no request for "
                       "more than 1000 ms"):
        await send(store, model, 11, 1.0)
    assert await send(store, model, 12, 1.0) == [3.0, 3.0]
    assert await send(store, model, 11, 1.0, start=True) == [1.0, 1.0]


@in_loop
async def test_a_sequence_with_a_request_in_flight_is_not_idle(
        store: SequenceStore, clock: FakeClock) -> None:
    model = Model()
    await send(store, model, 13, 1.0, start=True)
    model.gate = asyncio.Event()
    running = asyncio.create_task(send(store, model, 13, 1.0))
    await asyncio.sleep(0)
    clock.advance(5.0)
    assert store.expire(clock()) == []
    model.gate.set()
    assert await running == [2.0, 2.0]


@in_loop
async def test_expiry_frees_a_slot_for_a_new_sequence(
        store: SequenceStore, clock: FakeClock) -> None:
    model = Model()
    await send(store, model, 1, 1.0, start=True)
    await send(store, model, 2, 1.0, start=True)
    clock.advance(1.5)
    assert await send(store, model, 3, 1.0, start=True) == [1.0, 1.0]
    assert store.live == 1


@in_loop
async def test_close_drops_every_state(store: SequenceStore) -> None:
    model = Model()
    await send(store, model, 1, 1.0, start=True)
    store.close()
    assert store.live == 0
    with pytest.raises(InputError, match="sequence_start"):
        await send(store, model, 1, 1.0)


# -- the state pairs against the signature ---------------------------------------------------
def test_a_model_without_sequence_batching_has_no_store(clock: FakeClock) -> None:
    assert open_sequences("m", config(""), SIGNATURE, clock) is None


@pytest.mark.parametrize(("pair", "message"), [
    ("{input: nope, output: state_out}", "has no input 'nope' .*x, state_in"),
    ("{input: state_in, output: nope}", "has no output 'nope' .*y, state_out"),
    ("{input: state_in, output: y2}", r"input 'state_in' \(FP32 \[-1, 2\]\) and output 'y2' "
     r"\(INT64 \[-1, 2\]\) must have one datatype"),
    ("{input: state_in, output: y3}", "and output 'y3' .* must have one datatype and shape"),
    ("{input: free_in, output: free_out}", "variable dim past the batch dim"),
])
def test_a_state_pair_the_signature_does_not_back_is_a_config_error(
        clock: FakeClock, pair: str, message: str) -> None:
    signature = Signature(
        (*SIGNATURE.inputs, TensorSpec("free_in", "FP32", (-1, -1))),
        (*SIGNATURE.outputs, TensorSpec("y2", "INT64", (-1, 2)),
         TensorSpec("y3", "FP32", (-1, 3)), TensorSpec("free_out", "FP32", (-1, -1))),
        batched=True, max_batch_size=8, platform="fake")
    text = f"sequence_batching: {{state: [{pair}]}}\n"
    with pytest.raises(ConfigError, match="sequence_batching.state") as error:
        open_sequences("m", config(text), signature, clock)
    assert error.match(message)


def test_an_unbatched_model_starts_from_its_whole_shape(clock: FakeClock) -> None:
    signature = Signature((TensorSpec("x", "INT64", (3,)), TensorSpec("s", "INT64", (3,))),
                          (TensorSpec("y", "INT64", (3,)), TensorSpec("t", "INT64", (3,))),
                          batched=False, max_batch_size=0, platform="fake")
    text = "max_batch_size: 0\nsequence_batching: {state: [{input: s, output: t}]}\n"
    made = open_sequences("m", config(text), signature, clock)
    assert made is not None
    assert made._initial["s"].shape == (3,)
    assert made._initial["s"].dtype == np.int64


@pytest.mark.parametrize(("text", "message"), [
    (STATE + "response_cache: true\n", "sequence_batching and response_cache exclude"),
    ("sequence_batching: {state: [{input: a, output: a}]}\n", "names tensor 'a' twice"),
    ("sequence_batching: {state: []}\n", "at least 1"),
    ("sequence_batching: {state: [{input: a, output: b}], max_sequences: 0}\n", "max_sequences"),
    ("sequence_batching: {state: [{input: a, output: b}], max_sequence_idle_ms: 0}\n",
     "max_sequence_idle_ms"),
    ("sequence_batching: {state: [{input: a, output: b}], idle: 5}\n", "unknown key"),
])
def test_bad_sequence_batching_sections_fail_the_config(text: str, message: str) -> None:
    from surge.errors import ConfigError as Refused

    with pytest.raises(Refused, match=message):
        config(text)


# -- what clients see ----------------------------------------------------------------------
class View:
    name, version, versions, platform, devices = "m", 1, (1,), "onnxruntime_onnx", ("cpu",)

    def __init__(self, model_config: ModelConfig) -> None:
        self.config, self.signature = model_config, SIGNATURE


def test_the_metadata_hides_the_state_and_the_config_echoes_it() -> None:
    metadata = model_metadata(View(config()))
    assert [t["name"] for t in metadata["inputs"]] == ["x"]
    assert [t["name"] for t in metadata["outputs"]] == ["y"]
    echoed = model_config(View(config()))
    assert [t["name"] for t in echoed["input"]] == ["x"]
    assert "dynamic_batching" not in echoed, "Triton's scheduling oneof holds one of them"
    assert echoed["sequence_batching"] == {
        "max_sequence_idle_microseconds": 1_000_000,
        "state": [{"input_name": "state_in", "output_name": "state_out", "data_type": "TYPE_FP32",
                   "dims": [2], "initial_state": [{"data_type": "TYPE_FP32", "dims": [2],
                                                   "zero_data": True, "name": "zero"}]}],
        "oldest": {"max_candidate_sequences": 2, "preferred_batch_size": [],
                   "max_queue_delay_microseconds": 2000}}
    plain = model_config(View(config("")))
    assert "sequence_batching" not in plain
    assert [t["name"] for t in plain["input"]] == ["x", "state_in"]


def test_the_grpc_config_message_carries_the_echo() -> None:
    from google.protobuf import json_format

    from surge.protocol.grpc_gen import grpc_service_pb2 as pb

    message = json_format.ParseDict(model_config(View(config())), pb.ModelConfig())
    assert message.WhichOneof("scheduling_choice") == "sequence_batching"
    assert message.sequence_batching.state[0].initial_state[0].zero_data
    assert message.sequence_batching.oldest.max_candidate_sequences == 2


# -- the V2 parameters -----------------------------------------------------------------------
def test_the_sequence_parameters_are_read_as_triton_sends_them() -> None:
    assert parse_sequence(None, None, None) == {"sequence_id": 0, "sequence_start": False,
                                                "sequence_end": False}
    assert parse_sequence(2**64 - 1, True, False)["sequence_id"] == 2**64 - 1
    assert parse_sequence("abc", None, True) == {"sequence_id": "abc", "sequence_start": False,
                                                 "sequence_end": True}


@pytest.mark.parametrize(("values", "message"), [
    ((-1, None, None), "'sequence_id' must be a non-negative integer .* got -1"),
    ((2**64, None, None), "'sequence_id'"),
    ((True, None, None), "'sequence_id' .* got True"),
    ((1.5, None, None), "'sequence_id'"),
    ((1, "true", None), "'sequence_start' must be a bool .* got 'true'"),
    ((1, None, 1), "'sequence_end' must be a bool"),
])
def test_bad_sequence_parameters_are_refused(values: tuple[object, object, object],
                                             message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_sequence(*values)

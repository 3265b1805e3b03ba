"""Tensor transport: packing, both transports end to end over a real pipe, the setting."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from surge.errors import ConfigError
from surge.workers.messages import BatchDone, RunBatch
from surge.workers.transport import (
    TRANSPORT_ENV,
    PipeTransport,
    ShmTransport,
    WorkerEnd,
    make_transport,
    pack,
    segment_prefix,
    unpack,
)


def _shm_names() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(segment_prefix())}


def test_pack_joins_pieces_along_dim0_and_unpack_views_them() -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.arange(4, dtype=np.float32).reshape(1, 4) + 100
    ids = np.array([[7], [8], [9]], dtype=np.int64)
    text = np.array([[b"hi"], [b""], ["caf\u00e9".encode()]], dtype=object)
    buffer = bytearray()

    def alloc(size: int) -> memoryview:
        buffer.extend(bytes(size))
        return memoryview(buffer)

    metas = pack({"x": [a, b], "ids": [ids], "text": [text]}, alloc)
    assert all(m.offset % 64 == 0 for m in metas)
    out = unpack(metas, memoryview(buffer))
    np.testing.assert_array_equal(out["x"], np.concatenate([a, b]))
    np.testing.assert_array_equal(out["ids"], ids)
    assert out["text"].tolist() == text.tolist()
    assert out["x"].base is not None  # a view of the buffer, not a copy


def test_pack_takes_non_contiguous_arrays() -> None:
    x = np.arange(32, dtype=np.float32).reshape(4, 8)[:, ::2]
    buffer = bytearray()
    metas = pack({"x": [x]}, lambda n: (buffer.extend(bytes(n)), memoryview(buffer))[1])
    np.testing.assert_array_equal(unpack(metas, memoryview(buffer))["x"], x)


def _round_trip(transport: ShmTransport | PipeTransport) -> tuple[RunBatch, bool]:
    front, back = mp.Pipe()
    end = WorkerEnd()
    try:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        transport.send(front, 1, {"x": [x[:1], x[1:]]})
        message = back.recv()
        extra_on_pipe = back.poll()  # anything beyond the control message?
        inputs = end.inputs(back, message)
        np.testing.assert_array_equal(inputs["x"], x)
        end.reply(back, message, {"y": inputs["x"] * 2}, BatchDone(1, infer_ns=5))
        del inputs
        done = front.recv()
        outputs = transport.receive(front, done)
        np.testing.assert_array_equal(outputs["y"], x * 2)
        assert done.infer_ns == 5
        del outputs
        return message, extra_on_pipe
    finally:
        end.close()
        front.close()
        back.close()


def test_shm_transport_moves_tensors_through_shared_memory() -> None:
    before = _shm_names()
    transport = ShmTransport(1024, 1024)
    try:
        assert len(_shm_names() - before) == 2  # an input and an output slot
        message, extra_on_pipe = _round_trip(transport)
    finally:
        transport.close()
    assert message.input_slot
    assert message.output_slot
    assert not extra_on_pipe  # only the control message crossed the pipe
    assert _shm_names() == before  # both segments unlinked


def test_pipe_transport_copies_bytes_through_the_pipe() -> None:
    before = _shm_names()
    message, extra_on_pipe = _round_trip(PipeTransport())
    assert message.input_slot == ""
    assert extra_on_pipe  # the tensor bytes followed the message
    assert _shm_names() == before


def test_too_small_output_slot_falls_back_to_the_pipe_and_grows() -> None:
    transport = ShmTransport(1024, 64)
    front, back = mp.Pipe()
    end = WorkerEnd()
    try:
        transport.send(front, 1, {"x": [np.ones((1, 4), np.float32)]})
        message = back.recv()
        big = np.ones((64, 64), np.float32)
        end.reply(back, message, {"y": big}, BatchDone(1))
        done = front.recv()
        assert done.inline
        np.testing.assert_array_equal(transport.receive(front, done)["y"], big)
        assert transport.outputs.size >= big.nbytes  # the next batch fits the slot
    finally:
        end.close()
        transport.close()
        front.close()
        back.close()


def test_growing_the_input_slot_replaces_the_segment() -> None:
    before = _shm_names()
    transport = ShmTransport(64, 64)
    try:
        first = transport.inputs.name
        front, back = mp.Pipe()
        transport.send(front, 1, {"x": [np.ones((100, 4), np.float32)]})
        assert back.recv().input_slot != first
        assert transport.inputs.size >= 1600
        front.close()
        back.close()
    finally:
        transport.close()
    assert _shm_names() == before


def test_setting_switches_the_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRANSPORT_ENV, "pipe")
    assert isinstance(make_transport(None, 64, 64), PipeTransport)
    monkeypatch.setenv(TRANSPORT_ENV, "shm")
    shm = make_transport(None, 64, 64)
    assert isinstance(shm, ShmTransport)
    shm.close()
    monkeypatch.delenv(TRANSPORT_ENV)
    default = make_transport(None, 64, 64)
    assert isinstance(default, ShmTransport)
    default.close()
    assert isinstance(make_transport("pipe", 64, 64), PipeTransport)  # explicit beats env
    monkeypatch.setenv(TRANSPORT_ENV, "carrier-pigeon")
    with pytest.raises(ConfigError, match="carrier-pigeon"):
        make_transport(None, 64, 64)

"""The direct tensor channel to an actor, without Ray: frames both ways (on the socket and
through shared memory), the secret, a dead stream, and the pool's choice of tensor path."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.cluster.actor import BatchReply, Into, TensorBatch, pack_batch, unpack_batch
from surge.cluster.channel import (
    PREFIX,
    SECRET_BYTES,
    Channel,
    ChannelClosedError,
    ChannelServer,
    Scratch,
    _recv_exactly,
)
from surge.cluster.paths import path_name
from surge.cluster.pool import Instance, RayPool
from surge.cluster.shared import FIRST_SLOT_BYTES, Probe, ProbeSegment, shares_memory
from surge.cluster.site import ClusterSite
from surge.engine.instances import PoolSpec
from surge.repository import ModelConfig

SECRET = b"s" * SECRET_BYTES


def plus_one(batch_id: int, inputs: TensorBatch, into: Into | None = None) -> BatchReply:
    """An instance computing y = x + 1 (and failing batches whose x starts with -1)."""
    x = unpack_batch(inputs)["x"]
    if x.flat[0] == -1:
        return BatchReply(batch_id, None, error="ValueError: negative")
    return BatchReply(batch_id, pack_batch({"y": [x + 1]}, into), 1, 2, 3)


def one(x: np.ndarray) -> dict[str, list[np.ndarray]]:
    return {"x": [x]}


async def roundtrip(width: int, shared: bool) -> tuple[np.ndarray, BatchReply, Channel]:
    server = ChannelServer(plus_one, SECRET, "127.0.0.1")
    channel = await Channel.open(*server.address, SECRET, 5.0, shared)
    x = np.arange(2 * width, dtype=np.float32).reshape(2, width)
    pieces = [x[:1], x[1:]]  # two requests' rows, joined on the way
    return x, await channel.run(7, {"x": pieces}), channel


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("width", [1024, 2 << 20])  # 8 KiB and 16 MiB per batch
def test_batches_and_replies_travel_whole(width: int, shared: bool) -> None:
    async def body() -> None:
        x, reply, channel = await roundtrip(width, shared)
        assert reply.batch_id == 7
        assert (reply.input_ns, reply.infer_ns, reply.output_ns) == (1, 2, 3)
        assert reply.outputs is not None
        np.testing.assert_array_equal(unpack_batch(reply.outputs)["y"], x + 1)
        del reply  # consumed: as the pool does before it releases the slots
        channel.release(7)
        channel.close()

    asyncio.run(body())


def test_shared_memory_outputs_lie_in_the_slot_and_it_grows_for_larger_ones() -> None:
    async def body() -> None:
        server = ChannelServer(plus_one, SECRET, "127.0.0.1")
        channel = await Channel.open(*server.address, SECRET, 5.0, shared=True)
        assert channel.slots is not None
        small = await channel.run(1, one(np.ones((1, 8), np.float32)))
        pair = channel._leases[1].pair
        assert small.outputs is not None
        # Read in place from the output slot: nothing came on the socket.
        assert np.shares_memory(small.outputs.buffer, np.frombuffer(pair.outputs.buf, np.uint8))
        del small
        channel.release(1)
        big = np.ones((1, FIRST_SLOT_BYTES), np.float32)  # 4x the first output slot
        reply = await channel.run(2, one(big))
        assert channel._leases[2].pair is pair  # the freed pair is taken again
        assert reply.outputs is not None
        np.testing.assert_array_equal(unpack_batch(reply.outputs)["y"], big + 1)
        assert not np.shares_memory(reply.outputs.buffer,
                                    np.frombuffer(pair.outputs.buf, np.uint8))
        del reply
        channel.release(2)
        assert pair.outputs.size >= big.nbytes  # grown: the next one goes through the slot
        again = await channel.run(3, one(big))
        assert again.outputs is not None
        assert np.shares_memory(again.outputs.buffer, np.frombuffer(pair.outputs.buf, np.uint8))
        np.testing.assert_array_equal(unpack_batch(again.outputs)["y"], big + 1)
        del again
        channel.release(3)
        names = [pair.inputs.name, pair.outputs.name]
        channel.close()
        await asyncio.sleep(0.05)  # the reader's end closes the slots
        assert not any(Path("/dev/shm", name).exists() for name in names)

    asyncio.run(body())


def test_two_batches_in_flight_hold_two_slot_pairs() -> None:
    async def body() -> None:
        server = ChannelServer(plus_one, SECRET, "127.0.0.1")
        channel = await Channel.open(*server.address, SECRET, 5.0, shared=True)
        xs = [np.full((1, 4), i, np.float32) for i in (1, 2)]
        replies = await asyncio.gather(*(channel.run(i, one(x)) for i, x in enumerate(xs)))
        for x, reply in zip(xs, replies, strict=True):
            assert reply.outputs is not None
            np.testing.assert_array_equal(unpack_batch(reply.outputs)["y"], x + 1)
        assert channel._leases[0].pair is not channel._leases[1].pair
        del replies, reply
        channel.close()

    asyncio.run(body())


def test_the_probe_tells_whether_the_actor_shares_memory() -> None:
    segment = ProbeSegment()
    try:
        assert shares_memory(segment.probe)
        assert not shares_memory(Probe(segment.probe.name, b"another machine!"))
    finally:
        segment.close()
    assert not shares_memory(segment.probe)  # gone: as on a node with its own /dev/shm


def test_a_runner_error_fails_the_batch_not_the_channel() -> None:
    async def body() -> tuple[BatchReply, BatchReply]:
        server = ChannelServer(plus_one, SECRET, "127.0.0.1")
        channel = await Channel.open(*server.address, SECRET, 5.0)
        bad = await channel.run(1, one(np.full((1, 2), -1, np.float32)))
        good = await channel.run(2, one(np.ones((1, 2), np.float32)))
        channel.close()
        return bad, good

    bad, good = asyncio.run(body())
    assert bad.error == "ValueError: negative"
    assert bad.outputs is None
    assert good.outputs is not None


def test_a_connection_without_the_secret_is_refused() -> None:
    async def body() -> None:
        server = ChannelServer(plus_one, SECRET, "127.0.0.1")
        channel = await Channel.open(*server.address, b"x" * SECRET_BYTES, 5.0)
        with pytest.raises(ChannelClosedError):
            await channel.run(1, one(np.ones((1, 2), np.float32)))

    asyncio.run(body())


def test_a_stream_that_ends_fails_the_batches_waiting_on_it() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def die_after_the_first_frame() -> None:
        conn, _ = listener.accept()
        conn.recv(SECRET_BYTES + 64)
        conn.close()  # the actor's process was killed

    threading.Thread(target=die_after_the_first_frame, daemon=True).start()

    async def body() -> None:
        channel = await Channel.open(*listener.getsockname(), SECRET, 5.0)
        with pytest.raises(ChannelClosedError):
            await channel.run(1, one(np.ones((1, 2), np.float32)))
        assert channel.closed

    asyncio.run(body())
    listener.close()


# -- the pool's choice -------------------------------------------------------------------------
class Method:
    def __init__(self, result: Any) -> None:
        self.result, self.calls = result, 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1

        async def answer() -> Any:
            if isinstance(self.result, Exception):
                raise self.result
            return self.result(*args) if callable(self.result) else self.result

        return answer()


class FakeActor:
    """An actor whose `run` computes as a Ray call would and whose `open_channel` serves a
    real channel (or fails)."""

    def __init__(self, channel_fails: bool) -> None:
        def serve(secret: bytes, probe: Probe | None) -> tuple[str, int, bool]:
            host, port = ChannelServer(plus_one, secret, "127.0.0.1").address
            return host, port, probe is not None and shares_memory(probe)

        self.open_channel = Method(OSError("no route") if channel_fails else serve)
        self.run = Method(plus_one)


class Events:
    def batch_estimate(self, size: int) -> float | None:
        return None


@pytest.mark.parametrize(("channel", "shared_memory", "channel_fails", "path"), [
    (True, True, False, "shm"), (True, False, False, "channel"), (False, True, False, "ray"),
    (True, True, True, "ray")])
def test_the_settings_switch_the_tensor_path(tmp_path: Path, channel: bool, shared_memory: bool,
                                             channel_fails: bool, path: str) -> None:
    async def body() -> None:
        site = ClusterSite(str(tmp_path), channel=channel, shared_memory=shared_memory)
        pool = RayPool(PoolSpec("m", 1, ModelConfig()), Events(), site)  # type: ignore[arg-type]
        actor = FakeActor(channel_fails)
        instance = Instance(1, actor, 0.0)
        if site.channel:
            instance.channel = await pool._open_channel(instance)
        x = np.ones((2, 3), np.float32)
        reply = await pool._send(instance, 1, {"x": [x[:1], x[1:]]})
        assert reply.outputs is not None
        np.testing.assert_array_equal(unpack_batch(reply.outputs)["y"], x + 1)
        assert actor.run.calls == (1 if path == "ray" else 0)
        assert path_name(instance.channel) == path
        if instance.channel is not None:
            assert (instance.channel.slots is not None) == (path == "shm")
            instance.channel.close()

    asyncio.run(body())


def test_the_actor_reuses_its_buffers_batch_after_batch() -> None:
    scratch = Scratch()
    first = scratch.inputs(1 << 20)
    assert np.shares_memory(scratch.inputs(4096), first)
    assert not np.shares_memory(scratch.inputs(2 << 20), first)  # grown for a larger one
    out = np.frombuffer(scratch.outputs(1 << 20), np.uint8)
    assert np.shares_memory(np.frombuffer(scratch.outputs(64), np.uint8), out)


def test_the_actor_lets_go_of_a_huge_buffer_once_batches_are_small_again() -> None:
    """One 64 MiB batch, then 4 MiB ones: the buffers shrink to what those need (they held
    the 64 MiB for the connection's life); a 16 MiB one used at a quarter or more is kept."""
    scratch = Scratch()
    scratch.inputs(64 << 20)
    scratch.outputs(64 << 20)
    small = scratch.inputs(4 << 20)
    scratch.outputs(4 << 20)
    assert (scratch._inputs.nbytes, scratch._outputs.nbytes) == (4 << 20, 4 << 20)
    assert np.shares_memory(scratch.inputs(1 << 20), small)  # small buffers stay for reuse
    kept = scratch.inputs(16 << 20)
    assert np.shares_memory(scratch.inputs(4 << 20), kept)


def test_a_reply_this_end_cannot_read_fails_the_batch_instead_of_hanging_it() -> None:
    """A reply whose header lacks a field (an actor running another Surge version, say) ended
    the reader with a KeyError and left the batches waiting on the channel for ever."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_in_another_format() -> None:
        conn, _ = listener.accept()
        with conn:
            _recv_exactly(conn, SECRET_BYTES)
            header_len, body_len = PREFIX.unpack(_recv_exactly(conn, PREFIX.size))
            _recv_exactly(conn, header_len + body_len)  # the whole batch
            header = b'{"id":1,"outputs":[]}'
            conn.sendall(PREFIX.pack(len(header), 0) + header)
            conn.recv(1)  # stays open (only the reply is wrong) until the front end closes

    actor = threading.Thread(target=answer_in_another_format, daemon=True)
    actor.start()

    async def body() -> None:
        channel = await Channel.open(*listener.getsockname(), SECRET, 5.0)
        batch = asyncio.ensure_future(channel.run(1, one(np.ones((1, 2), np.float32))))
        await asyncio.wait([channel._task])
        await asyncio.wait([batch], timeout=5.0)  # the old reader left it pending for ever
        assert batch.done()
        with pytest.raises(ChannelClosedError, match="unreadable reply"):
            batch.result()
        assert channel.closed

    asyncio.run(body())
    actor.join(5.0)
    listener.close()

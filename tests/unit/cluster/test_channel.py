"""The direct tensor channel to an actor, without Ray: frames both ways, the secret, a dead
stream, and the pool's choice between the channel and Ray calls."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.cluster.actor import BatchReply, TensorBatch, pack_batch, unpack_batch
from surge.cluster.channel import SECRET_BYTES, Channel, ChannelClosedError, ChannelServer
from surge.cluster.pool import Instance, RayPool
from surge.cluster.site import ClusterSite
from surge.engine.instances import PoolSpec
from surge.repository import ModelConfig

SECRET = b"s" * SECRET_BYTES


def plus_one(batch_id: int, inputs: TensorBatch) -> BatchReply:
    """An instance computing y = x + 1 (and failing batches whose x starts with -1)."""
    x = unpack_batch(inputs)["x"]
    if x.flat[0] == -1:
        return BatchReply(batch_id, None, error="ValueError: negative")
    return BatchReply(batch_id, pack_batch({"y": [x + 1]}), 1, 2, 3)


async def roundtrip(rows: int, width: int) -> tuple[np.ndarray, BatchReply]:
    server = ChannelServer(plus_one, SECRET, "127.0.0.1")
    channel = await Channel.open(*server.address, SECRET, 5.0)
    try:
        x = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
        pieces = [x[: rows // 2], x[rows // 2:]]  # two requests' rows, joined on the way
        reply = await channel.run(7, pack_batch({"x": pieces}))
        return x, reply
    finally:
        channel.close()


@pytest.mark.parametrize("width", [1024, 2 << 20])  # 8 KiB and 16 MiB per batch
def test_batches_and_replies_travel_whole(width: int) -> None:
    x, reply = asyncio.run(roundtrip(2, width))
    assert reply.batch_id == 7
    assert (reply.input_ns, reply.infer_ns, reply.output_ns) == (1, 2, 3)
    assert reply.outputs is not None
    np.testing.assert_array_equal(unpack_batch(reply.outputs)["y"], x + 1)


def test_a_runner_error_fails_the_batch_not_the_channel() -> None:
    async def body() -> tuple[BatchReply, BatchReply]:
        server = ChannelServer(plus_one, SECRET, "127.0.0.1")
        channel = await Channel.open(*server.address, SECRET, 5.0)
        bad = await channel.run(1, pack_batch({"x": [np.full((1, 2), -1, np.float32)]}))
        good = await channel.run(2, pack_batch({"x": [np.ones((1, 2), np.float32)]}))
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
            await channel.run(1, pack_batch({"x": [np.ones((1, 2), np.float32)]}))

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
            await channel.run(1, pack_batch({"x": [np.ones((1, 2), np.float32)]}))
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
        def serve(secret: bytes) -> tuple[str, int]:
            return ChannelServer(plus_one, secret, "127.0.0.1").address

        self.open_channel = Method(OSError("no route") if channel_fails else serve)
        self.run = Method(plus_one)


class Events:
    def batch_estimate(self, size: int) -> float | None:
        return None


@pytest.mark.parametrize(("setting", "channel_fails", "path"), [
    (True, False, "channel"), (False, False, "ray"), (True, True, "ray")])
def test_the_setting_switches_the_tensor_path(tmp_path: Path, setting: bool,
                                              channel_fails: bool, path: str) -> None:
    async def body() -> None:
        site = ClusterSite(str(tmp_path), channel=setting)
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
        assert (instance.channel is not None) == (path == "channel")
        if instance.channel is not None:
            instance.channel.close()

    asyncio.run(body())

"""An instance actor answers a batch whose preprocessing refused some rows with the others'
outputs and the refused rows, as a worker process does, on every tensor path."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from surge.cluster.actor import ActorSpec, InstanceActor, pack_batch, unpack_batch
from surge.cluster.channel import Channel, ChannelServer
from surge.processors.in_worker import PreprocessedRunner
from tests.unit.cluster.test_channel import SECRET
from tests.unit.pipeline.test_in_worker import Summing, config, png, step


def test_refused_rows_travel_back_beside_the_outputs() -> None:
    actor = InstanceActor(ActorSpec("/nowhere", "m", None, 1, "cpu"))
    actor.runner = PreprocessedRunner(Summing(), config(step()))
    batch = pack_batch({"png": [np.array([png(1), b"nope", png(3)], object)],
                        "scale": [np.ones(3, np.float32)]})
    reply = actor.run(7, batch)
    assert reply.error == ""
    assert reply.outputs is not None
    assert unpack_batch(reply.outputs)["total"].tolist() == [64.0, 0.0, 192.0]
    assert [row for row, _ in reply.rejected] == [1]
    assert "input 'png' is not a JPEG or PNG file" in reply.rejected[0][1]


@pytest.mark.parametrize("shared", [False, True])
def test_refused_rows_travel_back_on_the_channel(shared: bool) -> None:
    """The channel (the default tensor path) dropped them: the refused row's request was
    answered 200 with the blank outputs computed in its place."""
    actor = InstanceActor(ActorSpec("/nowhere", "m", None, 1, "cpu"))
    actor.runner = PreprocessedRunner(Summing(), config(step()))
    parts = {"png": [np.array([png(1), b"nope", png(3)], object)],
             "scale": [np.ones(3, np.float32)]}

    async def body() -> tuple[tuple[int, str], ...]:
        server = ChannelServer(actor.run, SECRET, "127.0.0.1")
        channel = await Channel.open(*server.address, SECRET, 5.0, shared)
        reply = await channel.run(7, parts)
        assert reply.outputs is not None
        assert unpack_batch(reply.outputs)["total"].tolist() == [64.0, 0.0, 192.0]
        rejected = reply.rejected
        del reply  # consumed: its outputs may view the slot released below
        channel.release(7)
        channel.close()
        return rejected

    rejected = asyncio.run(body())
    assert [row for row, _ in rejected] == [1]
    assert "input 'png' is not a JPEG or PNG file" in rejected[0][1]

"""An instance actor answers a batch whose preprocessing refused some rows with the others'
outputs and the refused rows, as a worker process does."""

from __future__ import annotations

import numpy as np

from surge.cluster.actor import ActorSpec, InstanceActor, pack_batch, unpack_batch
from surge.processors.in_worker import PreprocessedRunner
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

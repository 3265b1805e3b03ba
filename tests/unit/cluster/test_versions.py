"""An instance on a node that runs another Surge than the front end is refused at load, naming
both versions: the two ends of the channel would not read each other's frames (a field one
does not know of is silently lost, as the refused rows of a batch once were)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from surge import __version__
from surge.cluster.actor import InstanceInfo
from surge.cluster.pool import Instance, RayPool, State
from surge.cluster.site import ClusterSite
from surge.engine.instances import PoolSpec
from surge.repository import ModelConfig
from tests.unit.cluster.test_channel import Method

pytest.importorskip("ray")


class Events:
    def batch_estimate(self, size: int) -> float | None:
        return None

    def on_ready(self) -> None:
        pass


class Actor:
    def __init__(self, info: InstanceInfo) -> None:
        self.load = Method(info)
        self.open_channel = Method(OSError("not reached"))


def loaded(tmp_path: Path, info: InstanceInfo) -> Instance:
    async def body() -> Instance:
        site = ClusterSite(str(tmp_path), channel=False)
        pool = RayPool(PoolSpec("m", 1, ModelConfig()), Events(), site)  # type: ignore[arg-type]
        instance = Instance(1, Actor(info), 0.0)
        pool._instances.append(instance)
        await pool._load(instance)
        pool._heartbeat.forget(instance.index)
        return instance

    return asyncio.run(body())


@pytest.mark.parametrize(("theirs", "named"), [("0.0.9", "it runs Surge 0.0.9"),
                                               ("", "it runs Surge (an older version)")])
def test_an_instance_of_another_surge_is_refused(tmp_path: Path, theirs: str,
                                                 named: str) -> None:
    sent = {"surge": theirs} if theirs else {}  # an older Surge's info has no such field
    instance = loaded(tmp_path, InstanceInfo("n1", "10.0.0.7", 42, "cpu", **sent))
    assert instance.state is State.DEAD
    assert instance.error.startswith(f"on node 10.0.0.7: {named}, this front end {__version__}")


def test_an_instance_of_this_surge_loads(tmp_path: Path) -> None:
    instance = loaded(tmp_path, InstanceInfo("n1", "10.0.0.7", 42, "cpu", surge=__version__))
    assert instance.state is State.READY

"""The Ray pool's scaling decisions on its own instances, without Ray: a lost instance whose
replacement waits out its backoff is not scaled up beside."""

from __future__ import annotations

import asyncio
from pathlib import Path

from surge.cluster.pool import Instance, RayPool, State
from surge.cluster.site import ClusterSite
from surge.engine.instances import PoolSpec
from surge.repository import ModelConfig
from surge.scheduler import Batch


class Events:
    def batch_estimate(self, size: int) -> float | None:
        return None


def full_pool(tmp_path: Path, cluster: dict[str, float]) -> tuple[RayPool, list[Instance]]:
    """A pool whose one live instance holds two batches; launches add starting instances
    (never placed) and are recorded."""
    spec = PoolSpec("m", 1, ModelConfig.model_validate({"placement": "cluster",
                                                         "cluster": cluster}))
    pool = RayPool(spec, Events(), ClusterSite(str(tmp_path)))  # type: ignore[arg-type]
    busy = Instance(1, None, 0.0, State.READY)
    busy.inflight = {1: Batch.__new__(Batch), 2: Batch.__new__(Batch)}
    pool._instances.append(busy)
    launched: list[Instance] = []

    def launch() -> Instance:
        launched.append(Instance(len(pool._instances) + 1, None, 0.0))
        pool._instances.append(launched[-1])
        return launched[-1]

    pool._launch = launch  # type: ignore[method-assign]
    return pool, launched


def test_a_replacement_on_its_way_is_not_scaled_up_beside(tmp_path: Path) -> None:
    async def body() -> list[Instance]:
        pool, launched = full_pool(tmp_path, {"instances": 2, "scale_up_after_s": 1.0})
        pool._replace_later()  # the second instance was lost: back after its backoff
        for step in range(40):  # 4 s of saturation, sampled every 0.1 s
            pool._tick(step / 10)
        return launched

    assert asyncio.run(body()) == []


def test_saturation_still_scales_up_to_the_ceiling(tmp_path: Path) -> None:
    async def body() -> list[Instance]:
        pool, launched = full_pool(tmp_path, {"instances": 1, "max_instances": 2,
                                              "scale_up_after_s": 1.0})
        for step in range(40):
            pool._tick(step / 10)
        return launched

    assert len(asyncio.run(body())) == 1

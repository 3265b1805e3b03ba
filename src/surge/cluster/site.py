"""What every Ray pool of one front end shares: the repository path, metrics, silent nodes.

`ClusterSite` is also the Engine's pool factory for models placed on the cluster.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from surge.cluster.actor import (
    CONCURRENCY_GROUPS,
    ActorSpec,
    BatchReply,
    InstanceActor,
    InstanceInfo,
    TensorBatch,
)
from surge.cluster.metrics import ClusterMetrics
from surge.engine.instances import InstancePool, PoolEvents, PoolSpec

if TYPE_CHECKING:
    from surge.cluster.pool import RayPool

log = logging.getLogger(__name__)


@functools.cache
def remote_instance_class() -> Any:
    """`InstanceActor` as a Ray actor class: batches and heartbeats in their own groups."""
    import ray

    @ray.remote(concurrency_groups=CONCURRENCY_GROUPS)  # type: ignore[call-overload]
    class SurgeInstance:
        def __init__(self, spec: ActorSpec) -> None:
            self.instance = InstanceActor(spec)

        @ray.method(concurrency_group="compute")
        def load(self) -> InstanceInfo:
            return self.instance.load()

        @ray.method(concurrency_group="compute")
        def run(self, batch_id: int, inputs: TensorBatch) -> BatchReply:
            return self.instance.run(batch_id, inputs)

        @ray.method(concurrency_group="health")
        def open_channel(self, secret: bytes) -> tuple[str, int]:
            return self.instance.open_channel(secret)

        @ray.method(concurrency_group="health")
        def ping(self) -> int:
            return self.instance.ping()

    return SurgeInstance


class ClusterSite:
    """The front end's place in a Ray cluster, as the pools of its models use it."""

    def __init__(self, root: str, registry: CollectorRegistry | None = None, *,
                 channel: bool = True) -> None:
        self.root = root
        # Batches on a direct channel to each actor (False: as Ray actor calls, measured
        # slower: docs/scale-out.md); an instance whose channel fails uses Ray calls anyway.
        self.channel = channel
        self.metrics = ClusterMetrics(registry or CollectorRegistry())
        self.suspects: set[str] = set()  # nodes that stopped answering: no new instance there
        self.pools: list[RayPool] = []

    def actor_class(self) -> Any:
        return remote_instance_class()

    def suspect(self, node_id: str) -> None:
        if node_id and node_id not in self.suspects:
            log.warning("node %s stopped answering heartbeats: no instance goes there any more",
                        node_id[:12])
            self.suspects.add(node_id)

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> InstancePool:
        """The pool factory: Ray actors for one served version."""
        from surge.cluster.pool import RayPool

        pool = RayPool(spec, events, self)
        self.pools.append(pool)
        return pool

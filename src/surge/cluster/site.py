"""What every Ray pool of one front end shares: the repository path, metrics, silent nodes.

`ClusterSite` is also the Engine's pool factory for models placed on the cluster.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
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
from surge.cluster.shared import Probe
from surge.engine.instances import InstancePool, PoolEvents, PoolSpec

if TYPE_CHECKING:
    from surge.cluster.pool import RayPool

log = logging.getLogger(__name__)

SUSPECT_S = 60.0  # Ray declares a silent node dead after about 15-55 s with its defaults


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
        def open_channel(self, secret: bytes, probe: Probe | None = None) -> tuple[str, int, bool]:
            return self.instance.open_channel(secret, probe)

        @ray.method(concurrency_group="health")
        def ping(self) -> int:
            return self.instance.ping()

    return SurgeInstance


class ClusterSite:
    """The front end's place in a Ray cluster, as the pools of its models use it."""

    def __init__(self, root: str, registry: CollectorRegistry | None = None, *,
                 channel: bool = True, shared_memory: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        # Batches on a direct channel to each actor (False: as Ray actor calls, measured
        # slower: docs/scale-out.md); an instance whose channel fails uses Ray calls anyway.
        self.channel = channel
        # On the channel, the tensors of an actor that shares this machine's memory go
        # through shared-memory slots (False: always on the socket; measured slower).
        self.shared_memory = shared_memory
        self.metrics = ClusterMetrics(registry or CollectorRegistry())
        self._suspected: dict[str, float] = {}  # node id -> when it stopped answering
        self._clock = clock
        self.pools: list[RayPool] = []

    def actor_class(self) -> Any:
        return remote_instance_class()

    @property
    def suspects(self) -> set[str]:
        """Nodes that stopped answering lately: no new instance goes there. Only lately: a
        node taken for silent on a saturated machine must not be shunned for ever, and Ray
        itself declares a really silent node dead within `SUSPECT_S`."""
        now = self._clock()
        return {node for node, since in self._suspected.items() if now - since < SUSPECT_S}

    def suspect(self, node_id: str) -> None:
        if node_id and node_id not in self.suspects:
            log.warning("node %s stopped answering heartbeats: no instance goes there for "
                        "%g s", node_id[:12], SUSPECT_S)
            self._suspected[node_id] = self._clock()

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> InstancePool:
        """The pool factory: Ray actors for one served version."""
        from surge.cluster.pool import RayPool

        pool = RayPool(spec, events, self)
        self.pools.append(pool)
        return pool

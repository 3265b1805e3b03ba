"""What every Ray pool of one front end shares: the repository path, metrics, silent nodes.

`ClusterSite` is also the Engine's pool factory for models placed on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
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
from surge.errors import ModelLoadError

if TYPE_CHECKING:
    from surge.cluster.pool import RayPool

log = logging.getLogger(__name__)

SUSPECT_S = 60.0  # Ray declares a silent node dead after about 15-55 s with its defaults
NODE_TABLE_TIMEOUT_S = 30.0


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

    def kill(self, actor: Any) -> None:
        """Kill `actor`, on a thread of its own: `ray.kill` waits on the GCS, which may be
        slow or gone, and must hold up neither the event loop nor the front end's exit."""
        threading.Thread(target=_kill, args=(actor,), name="surge-kill", daemon=True).start()

    async def node_table(self, timeout_s: float = NODE_TABLE_TIMEOUT_S) -> list[dict[str, Any]]:
        """Ray's node table, read on a thread of its own: it waits on the GCS, which may be
        gone (a thread of the loop's executor stuck there would hold up the exit too)."""
        loop = asyncio.get_running_loop()
        table: asyncio.Future[list[dict[str, Any]]] = loop.create_future()

        def read() -> None:
            import ray

            try:
                nodes, error = ray.nodes(), None
            except Exception as exc:
                nodes, error = [], exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, table, nodes, error)

        threading.Thread(target=read, name="surge-ray-nodes", daemon=True).start()
        try:
            return await asyncio.wait_for(table, timeout_s)
        except TimeoutError:
            raise ModelLoadError(f"the Ray cluster's GCS did not answer within {timeout_s:g} s "
                                 "(is its head down?)") from None

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> InstancePool:
        """The pool factory: Ray actors for one served version."""
        from surge.cluster.pool import RayPool

        pool = RayPool(spec, events, self)
        self.pools.append(pool)
        return pool


def _kill(actor: Any) -> None:
    import ray

    with contextlib.suppress(Exception):  # gone already, or Ray is shut down
        ray.kill(actor, no_restart=True)


def _settle(table: asyncio.Future[list[dict[str, Any]]], nodes: list[dict[str, Any]],
            error: Exception | None) -> None:
    if table.done():
        return
    if error is not None:
        table.set_exception(error)
    else:
        table.set_result(nodes)

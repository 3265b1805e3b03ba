"""The two tensor paths from the front end to an actor: its direct channel, or Ray calls.

The channel (`surge.cluster.channel`) is the default; shared memory on it when the actor's
node shares this machine's memory (`surge.cluster.shared`). Ray actor calls remain for an
actor whose channel cannot be opened (a firewall between the nodes, say).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from surge.cluster.actor import BatchReply, pack_batch
from surge.cluster.channel import SECRET_BYTES, Channel
from surge.cluster.shared import ProbeSegment
from surge.workers.transport import Parts, SlotSpaceError

OFFLOAD_BYTES = 100 * 1024  # Ray copies bigger arguments into its object store: off the loop


async def open_channel(actor: Any, shared_memory: bool, timeout_s: float) -> Channel:
    """Have the actor serve a channel and connect to it; shared memory when `shared_memory`
    and the actor sees this machine's segments."""
    secret = secrets.token_bytes(SECRET_BYTES)
    probe = ProbeSegment() if shared_memory else None
    try:
        host, port, shared = await asyncio.wait_for(
            actor.open_channel.remote(secret, probe.probe if probe else None), timeout_s)
    finally:
        if probe is not None:
            probe.close()
    return await Channel.open(host, port, secret, timeout_s, shared)


async def ray_call(actor: Any, batch_id: int, parts: Parts) -> BatchReply:
    """Compute a batch as a Ray actor call: the batch inline when small, else put into the
    object store by a thread (Ray's put copies synchronously, which would stall every other
    request)."""
    size = sum(p.nbytes for pieces in parts.values() for p in pieces)
    if size < OFFLOAD_BYTES:
        payload: Any = pack_batch(parts)
    else:
        payload = await asyncio.to_thread(_put, parts, size)
    reply: BatchReply = await actor.run.remote(batch_id, payload)
    return reply


def _put(parts: Parts, size: int) -> Any:
    """The batch in this node's object store; a full store fails this batch (503), not the
    instance it was meant for (Ray's errors otherwise read as a lost actor)."""
    import ray
    from ray.exceptions import ObjectStoreFullError, OutOfDiskError

    try:
        return ray.put(pack_batch(parts))
    except (ObjectStoreFullError, OutOfDiskError) as exc:
        raise SlotSpaceError(f"no room in the Ray object store for a batch of {size} bytes "
                             f"({type(exc).__name__})") from None


def path_name(channel: Channel | None) -> str:
    """The metrics' name of a tensor path: shm, channel (on the socket) or ray."""
    if channel is None:
        return "ray"
    return "shm" if channel.shared else "channel"

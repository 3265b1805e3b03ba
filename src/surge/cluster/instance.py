"""The front end's view of one instance actor: its state, batches in flight and speed."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from surge.cluster.channel import Channel
from surge.scheduler import Batch

PIPELINE_DEPTH = 2  # batches an instance holds: one computing, one waiting on its node
EWMA_ALPHA = 0.2


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"


@dataclass(eq=False)
class Instance:
    """The front end's view of one actor."""

    index: int
    actor: Any  # ray.actor.ActorHandle
    started: float
    state: State = State.STARTING
    node_id: str = ""
    device: str = ""
    error: str = ""
    inflight: dict[int, Batch] = field(default_factory=dict)
    last_done: float = 0.0
    idle_since: float = 0.0
    item_s: float | None = None  # its own EWMA of seconds per batch item: nodes differ
    channel: Channel | None = None  # the direct tensor path; None: batches as Ray calls
    avoided: frozenset[str] = frozenset()  # nodes its label selector excludes, for good
    placed: bool = False  # its actor exists on a node (it may still be loading)

    @property
    def free(self) -> int:
        return PIPELINE_DEPTH - len(self.inflight) if self.state is State.READY else 0

    def record(self, size: int, seconds: float) -> None:
        per_item = seconds / max(1, size)
        self.item_s = per_item if self.item_s is None else (
            EWMA_ALPHA * per_item + (1 - EWMA_ALPHA) * self.item_s)


def close_channel(instance: Instance) -> None:
    if instance.channel is not None:
        instance.channel.close()
        instance.channel = None


async def note_placement(instance: Instance) -> None:
    """Mark `instance` placed once its actor exists: a ping is answered by the actor's health
    group while its model loads, so this tells waiting for a node from loading on one."""
    from ray.exceptions import RayError

    try:
        await instance.actor.ping.remote()
    except RayError:  # the actor died: its load reports that
        return
    instance.placed = True

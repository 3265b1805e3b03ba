"""Which instance takes the next batch: the rule every pool of instances dispatches by."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from surge.scheduler.types import Batch


class Instance(Protocol):
    """What dispatch reads of an instance, whether a worker process or a thread of the server."""

    @property
    def batches(self) -> deque[Batch]: ...  # in dispatch order; [0] computes

    @property
    def free(self) -> int: ...  # places left for batches

    @property
    def last_done(self) -> float: ...  # loop time of its last result


def dispatch_order(worker: Instance) -> tuple[int, float]:
    """Which instance takes the next batch (the largest key): the most free places first; among
    busy ones, the one whose computing batch started first, which should finish first, so the
    new batch waits the least behind it."""
    if not worker.batches:
        return worker.free, 0.0
    return worker.free, -max(worker.batches[0].dispatched, worker.last_done)

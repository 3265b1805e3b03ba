"""What a pool of instances reports back, on the event loop, to the model it serves.

Defined beside the pools that call it (a worker pool, a shared group's members, Ray actors);
`surge.engine.ServedModel` implements it, and unit tests hand pools a recorder instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from surge.scheduler import Batch

if TYPE_CHECKING:
    from surge.workers.pool import BatchResult


class PoolEvents(Protocol):
    """What a pool reports back, on the event loop, to the model it serves."""

    def on_done(self, batch: Batch, outputs: dict[str, np.ndarray] | None,
                error: Exception | None, result: BatchResult | None) -> None:
        """`batch` was computed (`outputs`, `result`) or failed (`error`)."""

    def on_requeue(self, batch: Batch) -> None:
        """`batch` was handed out but never started (its instance died): queue it again."""

    def on_restart(self) -> None:
        """An instance died and is being restarted."""

    def on_ready(self) -> None:
        """An instance became ready: it can take batches queued meanwhile."""

    def on_hung(self, batch: Batch) -> None:
        """The instance computing `batch` hung and was stopped: a worker killed (and being
        restarted), an in-process instance's run interrupted (its thread serves on)."""

    def on_spawn_failure(self) -> None:
        """A restart could not start its instance; the pool tries again after a backoff."""

    def on_unavailable(self, error: Exception) -> None:
        """No instance lives and none is sure to come: fail the queued requests with `error`."""

    def batch_estimate(self, size: int) -> float | None:
        """Seconds a batch of `size` should take (None before any was measured)."""

    def wake(self) -> None:
        """Instances shared with other models have room again: try to hand out a batch."""

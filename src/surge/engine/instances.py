"""The seam between a served model and its instances: what a pool does, and what it reports back.

`surge.workers.WorkerPool` (one process per instance, tensors through shared memory) is the
production pool; a served model only sees `InstancePool`, so its driver can be run against a
scripted pool in unit tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from surge.repository import ModelConfig
from surge.runtimes.base import Signature
from surge.scheduler import Batch
from surge.workers.pool import BatchResult

# A monotonic time source in seconds. Production uses the event loop's own clock, which the
# worker pool also reads when it times batches; unit tests hand in a clock they advance.
Clock = Callable[[], float]


@dataclass(frozen=True)
class PoolSpec:
    """What the instances of one served version load and how they are configured."""

    ref: str  # the model name, or "name@variant"
    version: int | None  # None: a variant's own files (variants are not versioned)
    config: ModelConfig


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
        """The instance computing `batch` hung and was killed (and is being restarted)."""

    def on_spawn_failure(self) -> None:
        """A restart could not start its instance; the pool tries again after a backoff."""

    def batch_estimate(self, size: int) -> float | None:
        """Seconds a batch of `size` should take (None before any was measured)."""


class InstancePool(Protocol):
    """The instances of one served model version, as the driver of that version uses them."""

    @property
    def signature(self) -> Signature | None:
        """The model's signature, known once an instance has loaded it."""

    @property
    def instances(self) -> int:
        """How many instances compute batches in parallel."""

    @property
    def ready(self) -> bool:
        """All instances warmed up once, and at least one alive now."""

    @property
    def idle_count(self) -> int:
        """Batches the pool can take now."""

    @property
    def idle_workers(self) -> int:
        """Live instances with nothing to compute."""

    async def start(self) -> None:
        """Start every instance; return once all have loaded the model."""

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every instance; batches still held fail with WorkerCrashedError."""

    def devices(self) -> tuple[str, ...]:
        """Where each ready instance computes ('cpu', 'cuda:0', ...)."""

    def dispatch(self, batch: Batch) -> None:
        """Hand `batch` to an instance (the caller checked `idle_count`)."""


# Builds the pool of one served version; the served model passes itself as the events.
PoolFactory = Callable[[PoolSpec, PoolEvents], InstancePool]

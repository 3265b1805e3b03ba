"""The seam between a served model and its instances: what a pool does, and what it reports back.

`surge.workers.WorkerPool` (one process per instance, tensors through shared memory) is the
production pool; a served model only sees `InstancePool`, so its driver can be run against a
scripted pool in unit tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from surge.repository import ModelConfig
from surge.runtimes.base import Signature
from surge.scheduler import Batch
from surge.workers.events import PoolEvents as PoolEvents  # re-exported

# A monotonic time source in seconds. Production uses `time.monotonic` (Engine.clock), which
# the worker pool also reads when it times batches; unit tests hand in a clock they advance.
Clock = Callable[[], float]


@dataclass(frozen=True)
class PoolSpec:
    """What the instances of one served version load and how they are configured."""

    ref: str  # the model name, or "name@variant"
    version: int | None  # None: a variant's own files (variants are not versioned)
    config: ModelConfig


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

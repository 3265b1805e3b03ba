"""The front end's view of one worker process: its state, its pipe and the batches it holds."""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from surge.scheduler.types import Batch
from surge.workers.placement import Placement
from surge.workers.transport import Transport

PIPELINE_DEPTH = 2  # batches a worker holds: one computing, one waiting in its slot


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"


@dataclass
class Worker:
    """The front end's view of one worker process."""

    index: int
    placement: Placement
    process: BaseProcess
    conn: Connection
    started: float
    state: State = State.STARTING
    transport: Transport | None = None
    batches: deque[Batch] = field(default_factory=deque)  # in send order; [0] is computing
    last_done: float = 0.0  # loop time of its last result
    load_error: str = ""
    device: str = ""  # where its engine runs, from its Ready message
    watch: asyncio.TimerHandle | None = None  # fires when batches[0] computes too long

    @property
    def free(self) -> int:
        """Batches this worker can take now."""
        return PIPELINE_DEPTH - len(self.batches) if self.state is State.READY else 0

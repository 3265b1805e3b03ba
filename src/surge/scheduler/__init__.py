"""The task scheduler: per-model priority queue, dynamic batching, deadlines, admission."""

from surge.scheduler.scheduler import Scheduler
from surge.scheduler.types import (
    DEFAULT_PRIORITY_LEVEL,
    Batch,
    Completed,
    LevelPolicy,
    Request,
    SchedulerConfig,
    ShapeKey,
    shape_key,
)

__all__ = [
    "DEFAULT_PRIORITY_LEVEL",
    "Batch",
    "Completed",
    "LevelPolicy",
    "Request",
    "Scheduler",
    "SchedulerConfig",
    "ShapeKey",
    "shape_key",
]

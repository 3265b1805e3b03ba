"""The task scheduler: per-model priority queue, dynamic batching, deadlines, admission."""

from surge.scheduler.scheduler import Scheduler
from surge.scheduler.types import Batch, Completed, Request, SchedulerConfig, ShapeKey, shape_key

__all__ = [
    "Batch",
    "Completed",
    "Request",
    "Scheduler",
    "SchedulerConfig",
    "ShapeKey",
    "shape_key",
]

"""Compute workers: one process per model instance, or shared worker groups hosting several
models per process (`surge.workers.group`); tensors through shared memory."""

from surge.workers.pool import Placement, WorkerPool, plan_instances
from surge.workers.transport import PipeTransport, ShmTransport, Transport, make_transport

__all__ = [
    "PipeTransport",
    "Placement",
    "ShmTransport",
    "Transport",
    "WorkerPool",
    "make_transport",
    "plan_instances",
]

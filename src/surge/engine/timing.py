"""Where one request's time went inside the engine, for the access log and tracing.

A front end that wants the breakdown sets `request_timing` to a fresh `RequestTiming` before
awaiting `InferenceEngine.infer`; the served model fills it in (on the engine's clock) as the
request is queued, batched and computed. Nothing is recorded when it is unset, so requests
that are neither logged nor traced cost one context-variable read.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RequestTiming:
    """Engine-clock times (seconds) of one request; 0.0 where it never got that far."""

    queued: float = 0.0  # admitted into the queue
    dispatched: float = 0.0  # its batch handed to an instance
    done: float = 0.0  # its batch's outputs back
    batch_size: int = 0  # rows in the batch it was computed in
    compute_s: float = 0.0  # the worker's own time for the batch (inputs, run, outputs)

    @property
    def queue_s(self) -> float:
        return max(0.0, self.dispatched - self.queued) if self.dispatched else 0.0

    @property
    def batch_s(self) -> float:
        return max(0.0, self.done - self.dispatched) if self.done else 0.0


# Set by the front end around one `infer` await; read once by the served model.
request_timing: ContextVar[RequestTiming | None] = ContextVar("surge_request_timing", default=None)

__all__ = ["RequestTiming", "request_timing"]

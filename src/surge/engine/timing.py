"""Where one request's time went inside the engine, for the access log and tracing.

A front end that wants the breakdown sets `request_timing` to a fresh `RequestTiming` before
awaiting `InferenceEngine.infer`; the served model fills it in (on the engine's clock) as the
request is queued, batched and computed. Nothing is recorded when it is unset, so requests
that are neither logged nor traced cost one context-variable read.

`LoopLag` measures the time no breakdown shows: how long the event loop makes a request wait
before it reaches the engine and after it is answered.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from surge.scheduler.latency import DecayingLevel

if TYPE_CHECKING:
    from surge.workers.pool import BatchResult

# A request meets the loop's backlog twice: its arrival waits behind it, and so does its answer.
LAG_HOPS = 2


@dataclass
class RequestTiming:
    """Engine-clock times (seconds) of one request; 0.0 where it never got that far."""

    queued: float = 0.0  # admitted into the queue
    dispatched: float = 0.0  # its batch handed to an instance
    done: float = 0.0  # its batch's outputs back
    batch_size: int = 0  # rows in the batch it was computed in
    compute_s: float = 0.0  # the worker's own time for the batch (inputs, run, outputs)
    # A pipeline's request: each model step's own timing, in order (the fields above stay 0:
    # every step is queued and batched with its model's other requests)
    steps: list[tuple[str, RequestTiming]] = field(default_factory=list)

    @property
    def queue_s(self) -> float:
        if self.steps:
            return sum(timing.queue_s for _, timing in self.steps)
        return max(0.0, self.dispatched - self.queued) if self.dispatched else 0.0

    @property
    def batch_s(self) -> float:
        if self.steps:
            return sum(timing.batch_s for _, timing in self.steps)
        return max(0.0, self.done - self.dispatched) if self.done else 0.0

    def step(self, name: str) -> RequestTiming:
        """A fresh timing for a pipeline's model step `name`, kept in `steps`."""
        timing = RequestTiming()
        self.steps.append((name, timing))
        return timing


# Set by the front end around one `infer` await; read once by the served model.
request_timing: ContextVar[RequestTiming | None] = ContextVar("surge_request_timing", default=None)


class LoopLag:
    """How long a ready callback waits in the event loop: the front end's backlog.

    Under an overload of the front end the time is lost there, not in the queue (the default
    model's surge: the worker kept up, answers took 170-550 ms against a 50 ms deadline).
    On an arrival (`sample`), at most every `every_s`, a callback is queued with `call_soon`;
    the time until it runs is the wait every request meets on its way in and again on its way
    out. `on_lag` gets the seconds a request loses both ways (a `DecayingLevel` of the
    samples, times `LAG_HOPS`). No timer: an idle model costs nothing, and a probe that waits
    in a saturated loop is itself the measurement.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float],
                 on_lag: Callable[[float], None], every_s: float = 0.005) -> None:
        self._loop, self._clock, self._on_lag = loop, clock, on_lag
        self.every_s = every_s
        self.level = DecayingLevel()
        self._asked = -math.inf
        self._pending = False

    def sample(self, now: float) -> None:
        """A request arrived at `now`: queue a probe, unless one waits or ran lately."""
        if self._pending or now - self._asked < self.every_s:
            return
        self._pending, self._asked = True, now
        self._loop.call_soon(self._landed, now)

    def _landed(self, asked: float) -> None:
        now = self._clock()
        self._pending = False
        self.level.observe(now, max(0.0, now - asked))
        self._on_lag(LAG_HOPS * self.level.value(now))


__all__ = ["LAG_HOPS", "LoopLag", "RequestTiming", "request_timing"]


def worker_seconds(result: BatchResult | None) -> float:
    """The worker's own time for a batch: inputs in, run, outputs out."""
    if result is None:
        return 0.0
    done = result.done
    return (done.input_ns + done.infer_ns + done.output_ns) / 1e9

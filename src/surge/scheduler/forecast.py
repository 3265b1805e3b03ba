"""When queued work would be done: the predictions admission, expiry and dispatch act on.

Pure functions of the measured batch times (`InstanceTimes`), the batches in flight and the
largest batch; the scheduler owns that state and asks these with `now`.
"""

from __future__ import annotations

from collections.abc import Mapping

from surge.scheduler.estimate import InstanceTimes
from surge.scheduler.types import Batch


class Forecast:
    """Predicted times over one scheduler's measurements and batches in flight."""

    __slots__ = ("_times", "_inflight", "_limit")

    def __init__(self, times: InstanceTimes, inflight: Mapping[int, Batch], limit: int) -> None:
        self._times = times
        self._inflight = inflight  # the scheduler's own dict: read live, never copied
        self._limit = limit  # items per batch

    def finish_time(self, items: int, now: float) -> float:
        """Seconds until the last of `items` queued items is computed.

        When the batches fit the idle instances, the last one runs on the slowest instance
        it reaches: the pool hands batches to the fastest idle instance first, so the busy
        ones are taken to be the fastest. Otherwise the live instances work the queue off
        together, after the batches they hold.
        """
        limit = self._limit
        batches = -(-items // limit)
        busy = min(len(self._inflight), self._times.live)
        if batches <= self._times.live - busy:
            return self._times.estimates(items - (batches - 1) * limit)[busy + batches - 1]
        return self.busy_wait(now) + self.work_time(items)

    def work_time(self, items: int) -> float:
        """Seconds the live instances need together for `items` items, in full batches."""
        full, rest = divmod(items, self._limit)
        total = full / (self._times.rate(self._limit) or float("inf"))
        if rest:
            total += 1.0 / (self._times.rate(rest) or float("inf"))
        return total

    def busy_wait(self, now: float) -> float:
        """Seconds until the workers are through the batches already handed to them.

        Zero while a worker is idle. A batch waiting behind another in a worker counts as
        its whole estimate left from its dispatch time: a slight underestimate.
        """
        live = self._times.live
        if len(self._inflight) < live:
            return 0.0
        left = sum(
            max(0.0, b.dispatched + self._typical(b.size) - now) for b in self._inflight.values()
        )
        return left / live

    def _typical(self, size: int) -> float:
        """A batch's time on a live instance of average speed (0.0 before any measurement)."""
        times = self._times.estimates(size)
        return sum(times) / len(times) if times else 0.0

    def first_free(self, now: float) -> float:
        """Seconds until a worker can start a batch handed out now (0.0 while one is idle)."""
        if len(self._inflight) < self._times.live:
            return 0.0
        return min(
            max(0.0, b.dispatched + (self._times.estimate(b.size) or 0.0) - now)
            for b in self._inflight.values()
        )

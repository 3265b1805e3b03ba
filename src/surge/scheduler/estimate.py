"""How long a batch takes, by batch size: the measurement admission control predicts with.

An EWMA per batch size of the service times the driver reports. Two rules keep one bad sample
from ruling admission for long:

- a sample above `outlier_multiple` times the current estimate counts as that multiple: a
  worker that stalled for seconds (stopped, swapped out) moves the estimate by a bounded step,
  while a real slowdown still takes over within a few batches;
- `remeasure(size, seconds)` replaces the estimate outright: the scheduler calls it with a
  probe's time, a request it admitted because the estimate alone refused work on an idle model.
"""

from __future__ import annotations

from surge.scheduler.latency import LinearLatency


class BatchTimes:
    """Estimated seconds to compute a batch, per batch size."""

    def __init__(self, alpha: float = 0.2, outlier_multiple: float = 4.0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if outlier_multiple < 1.0:
            raise ValueError(f"outlier_multiple must be >= 1, got {outlier_multiple}")
        self.alpha = alpha
        self.outlier_multiple = outlier_multiple
        self._times: dict[int, float] = {}
        # The estimates capped by every larger size's: a batch does not take longer than a
        # larger one, though a size measured rarely (or last in a stall) can say so for long.
        self._capped: dict[int, float] = {}
        self.line = LinearLatency()  # the same samples as a + b * n, for any size

    def __bool__(self) -> bool:
        """Whether any batch has been measured."""
        return bool(self._times)

    def estimate(self, size: int) -> float | None:
        """Seconds for a batch of `size` items; None before any measurement.

        An unmeasured size between two measured ones lies on the straight line joining them
        (batch time is close to a + b * n; taking the larger size instead would price a batch
        of 2 as a full one when only 1 and the full size were probed on load). Below every
        measured size it takes the nearest larger one (errs towards admitting less), above
        every one it scales the largest.
        """
        times = self._capped
        if size in times:
            return times[size]
        if not times:
            return None
        larger = [s for s in times if s > size]
        smaller = [s for s in times if s < size]
        if larger and smaller:
            low, high = max(smaller), min(larger)
            share = (size - low) / (high - low)
            return times[low] + share * (times[high] - times[low])
        if larger:
            return times[min(larger)]
        biggest = max(times)
        return times[biggest] * size / biggest

    def fastest(self) -> float:
        """The smallest estimate of any size (0.0 before any measurement)."""
        return min(self._times.values(), default=0.0)

    def record(self, size: int, seconds: float) -> None:
        """Fold one measured batch into the estimate of its size."""
        sample = self._bounded(size, seconds)
        self.line.record(size, sample)
        previous = self._times.get(size)
        self._times[size] = sample if previous is None else (
            self.alpha * sample + (1 - self.alpha) * previous
        )
        self._cap()

    def remeasure(self, size: int, seconds: float) -> None:
        """Take `seconds` as the estimate of `size`: the old one was found stale.

        Still bounded by the outlier rule, so a probe that itself stalls cannot poison it.
        """
        self._times[size] = self._bounded(size, seconds)
        self.line.record(size, self._times[size])
        self._cap()

    def _cap(self) -> None:
        smallest_above = float("inf")
        capped = {}
        for size in sorted(self._times, reverse=True):
            smallest_above = min(smallest_above, self._times[size])
            capped[size] = smallest_above
        self._capped = capped

    def _bounded(self, size: int, seconds: float) -> float:
        """`seconds`, cut to the outlier multiple of the current estimate (of a nearby size
        when this one is unmeasured)."""
        current = self.estimate(size)
        return seconds if current is None else min(seconds, self.outlier_multiple * current)


class InstanceTimes:
    """`BatchTimes` per instance (nodes differ), and which of them are live.

    The pool reports the instance that computed each batch, and the driver how many instances
    take batches now (`live`). The live ones are taken to be the `live` instances that reported
    most recently: a lost instance stops reporting and its replacement starts to, so neither
    needs announcing. A live instance not measured yet counts as the slowest measured one.
    """

    def __init__(self, alpha: float = 0.2, outlier_multiple: float = 4.0, live: int = 1) -> None:
        BatchTimes(alpha, outlier_multiple)  # checks the settings
        self.alpha, self.outlier_multiple = alpha, outlier_multiple
        self._live = max(1, live)
        self._times: dict[int, BatchTimes] = {}  # least recently reporting first
        # Per size, what `estimates` and `rate` answer until the next batch or live change:
        # admission asks on every arrival (10,000 a second in a surge of the default model,
        # where working them out again took a tenth of the event loop) and batches are rarer.
        self._estimates: dict[int, tuple[float, ...]] = {}
        self._rates: dict[int, float] = {}

    @property
    def live(self) -> int:
        return self._live

    @live.setter
    def live(self, value: int) -> None:
        if value != self._live:
            self._live = value
            self._forget_answers()

    def _forget_answers(self) -> None:
        self._estimates.clear()
        self._rates.clear()

    def __bool__(self) -> bool:
        """Whether any live instance has been measured."""
        return bool(self._measured())

    def record(self, instance: int, size: int, seconds: float) -> None:
        """Fold one batch computed by `instance` into its own estimate."""
        times, seconds = self._touch(instance, size, seconds)
        times.record(size, seconds)
        self._forget_answers()

    def remeasure(self, instance: int, size: int, seconds: float) -> None:
        """Take `seconds` as `instance`'s estimate of `size` (a probe found it stale)."""
        times, seconds = self._touch(instance, size, seconds)
        times.remeasure(size, seconds)
        self._forget_answers()

    def _touch(self, instance: int, size: int, seconds: float) -> tuple[BatchTimes, float]:
        """The instance's times, now the most recent; a first sample bounded by the others'
        (a new instance whose first batch stalls must not rule admission either)."""
        times = self._times.pop(instance, None)
        if times is None:
            times = BatchTimes(self.alpha, self.outlier_multiple)
            slowest = self.estimates(size)
            if slowest:
                seconds = min(seconds, self.outlier_multiple * slowest[-1])
        self._times[instance] = times
        while len(self._times) > 4 * self.live + 4:  # forget long-gone instances
            del self._times[next(iter(self._times))]
        return times, seconds

    def _measured(self) -> list[BatchTimes]:
        return [t for t in list(self._times.values())[-self.live:] if t]

    def estimates(self, size: int) -> tuple[float, ...]:
        """Seconds for a batch of `size` on each live instance, fastest first (() unmeasured)."""
        answer = self._estimates.get(size)
        if answer is None:
            known = sorted(t.estimate(size) or 0.0 for t in self._measured())
            answer = tuple(known + [known[-1]] * (self.live - len(known))) if known else ()
            self._estimates[size] = answer
        return answer

    def estimate(self, size: int, instance: int | None = None) -> float | None:
        """`instance`'s own estimate; without one (or unmeasured), the slowest live instance's."""
        own = self._times.get(instance) if instance is not None else None
        if own:
            return own.estimate(size)
        known = self.estimates(size)
        return known[-1] if known else None

    def fitted(self, size: int) -> float | None:
        """Seconds for a batch of `size` on the slowest live instance by its fitted line
        (`a + b * n`); None before any measurement."""
        known = [t.line.predict(size) for t in self._measured()]
        return max((k for k in known if k is not None), default=None)

    def lines(self) -> dict[int, tuple[float, float]]:
        """Each measured live instance's fitted (a, b), by instance."""
        live = list(self._times.items())[-self.live:]
        return {i: c for i, t in live if (c := t.line.coefficients) is not None}

    def rate(self, size: int) -> float:
        """Batches of `size` per second that the live instances compute together."""
        answer = self._rates.get(size)
        if answer is None:
            answer = self._rates[size] = sum(1.0 / max(t, 1e-9) for t in self.estimates(size))
        return answer

    def fastest(self) -> float:
        """The smallest estimate of any size on any live instance (0.0 before any)."""
        return min((t.fastest() for t in self._measured()), default=0.0)

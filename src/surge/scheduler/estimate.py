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

    def __bool__(self) -> bool:
        """Whether any batch has been measured."""
        return bool(self._times)

    def estimate(self, size: int) -> float | None:
        """Seconds for a batch of `size` items; None before any measurement.

        An unmeasured size takes the nearest larger measured size (compute time grows with
        size, so this errs towards admitting less), else scales the largest smaller one.
        """
        if size in self._times:
            return self._times[size]
        if not self._times:
            return None
        larger = [s for s in self._times if s > size]
        if larger:
            return self._times[min(larger)]
        biggest = max(self._times)
        return self._times[biggest] * size / biggest

    def fastest(self) -> float:
        """The smallest estimate of any size (0.0 before any measurement)."""
        return min(self._times.values(), default=0.0)

    def record(self, size: int, seconds: float) -> None:
        """Fold one measured batch into the estimate of its size."""
        sample = self._bounded(size, seconds)
        previous = self._times.get(size)
        self._times[size] = sample if previous is None else (
            self.alpha * sample + (1 - self.alpha) * previous
        )

    def remeasure(self, size: int, seconds: float) -> None:
        """Take `seconds` as the estimate of `size`: the old one was found stale.

        Still bounded by the outlier rule, so a probe that itself stalls cannot poison it.
        """
        self._times[size] = self._bounded(size, seconds)

    def _bounded(self, size: int, seconds: float) -> float:
        """`seconds`, cut to the outlier multiple of the current estimate (of a nearby size
        when this one is unmeasured)."""
        current = self.estimate(size)
        return seconds if current is None else min(seconds, self.outlier_multiple * current)

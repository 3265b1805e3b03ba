"""Online models of what the SLO-aware batching decides with: batch time and arrival rate.

- `LinearLatency`: batch time as `a + b * n`, least squares over the recent batches of one
  instance. A fixed part (the hops, the engine's per-call overhead) plus a per-item part is how
  batch time grows on CPU and GPU alike, and two numbers fitted over a window follow a drift
  without remembering every size separately.
- `ArrivalRate`: requests per second, from the typical gap between recent arrivals, which also
  grows while nothing arrives, so "nothing else is coming" is seen without a timer.
- `DecayingLevel`: the level of a noisy delay (the front end's event-loop lag) that follows a
  lasting rise within a few samples and forgets a single stall within a second or two.
- `CompletionMargin`: how much later than predicted the answers reach their clients (the p99
  of the recent errors), which admission adds to every prediction.
"""

from __future__ import annotations

import math
from collections import deque


class LinearLatency:
    """Seconds for a batch of `n` items as `a + b * n`, fitted over the last `window` batches."""

    def __init__(self, window: int = 64) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None

    def __bool__(self) -> bool:
        """Whether any batch has been measured."""
        return bool(self._samples)

    def record(self, size: int, seconds: float) -> None:
        """Add one measured batch and refit."""
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self._samples.append((size, max(0.0, seconds)))
        self._fit = _least_squares(self._samples)

    @property
    def coefficients(self) -> tuple[float, float] | None:
        """(a, b) in seconds and seconds per item; None before any measurement."""
        return self._fit

    def predict(self, size: int) -> float | None:
        """Seconds for a batch of `size` items; None before any measurement."""
        if self._fit is None:
            return None
        a, b = self._fit
        return a + b * size


def _least_squares(samples: deque[tuple[int, float]]) -> tuple[float, float]:
    """(a, b) minimising the squared error of `a + b * n`, with both kept >= 0.

    With a single size measured there is no slope to fit: the time is taken as proportional to
    the size (b = t / n), which errs towards larger batches costing more. A negative slope
    (noise over a narrow range of sizes) or intercept is clipped: batch time never falls as
    batches grow, and is never below zero for one item.
    """
    count = len(samples)
    mean_n = sum(n for n, _ in samples) / count
    mean_t = sum(t for _, t in samples) / count
    var_n = sum((n - mean_n) ** 2 for n, _ in samples)
    if var_n == 0.0:
        return 0.0, mean_t / mean_n
    b = sum((n - mean_n) * (t - mean_t) for n, t in samples) / var_n
    b = max(0.0, b)
    a = mean_t - b * mean_n
    if a < 0.0:  # keep the line through the mean, pivoting to a zero intercept
        a, b = 0.0, mean_t / mean_n
    return a, b


class ArrivalRate:
    """Requests per second: the median gap between the last `window` arrivals.

    A median, so one long idle gap before a surge does not hide the surge for long (a mean
    would need dozens of arrivals to forget it). The rate at `now` uses the time since the last
    arrival when that is longer than the median: a stream that stopped is seen as stopped at
    once, not after its next request.
    """

    def __init__(self, window: int = 8) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._gaps: deque[float] = deque(maxlen=window)
        self._last: float | None = None

    def arrive(self, now: float) -> None:
        """A request arrived at `now`."""
        if self._last is not None:
            self._gaps.append(max(0.0, now - self._last))
        self._last = now

    @property
    def typical_gap(self) -> float | None:
        """The typical (median) gap between arrivals; None before two arrivals."""
        if not self._gaps:
            return None
        ordered = sorted(self._gaps)
        return ordered[len(ordered) // 2]

    def since_last(self, now: float) -> float:
        """Seconds since the last arrival (inf before any)."""
        return float("inf") if self._last is None else max(0.0, now - self._last)

    def gap(self, now: float) -> float | None:
        """The gap between arrivals as it stands at `now`: the median, or the time since the
        last arrival when that is longer; None before two arrivals."""
        typical = self.typical_gap
        if typical is None:
            return None
        return max(typical, self.since_last(now))

    def rate(self, now: float) -> float:
        """Requests per second expected now (0.0 before two arrivals)."""
        gap = self.gap(now)
        if gap is None:
            return 0.0
        return float("inf") if gap == 0.0 else 1.0 / gap


class DecayingLevel:
    """The recent level of a noisy delay, in seconds, kept without storing the samples.

    Each sample above the level moves it `rise` of the way up, each one below `fall` of the way
    down, and the level halves every `half_life_s` besides, so a stall is forgotten even when
    samples come rarely (a saturated event loop runs the probe once per backlog). The defaults
    track the average: measured on the default model's surge (2 busy cores), a high level
    (half way up, 5% down) held the front end's lag at 250-540 ms and refused every request,
    goodput 0, while the lag came and went and a fifth of the requests could still be answered
    in time; at a fifth either way the surge's goodput was 960-1,380/s in two runs against
    3-550/s before (neither the lag nor the dispatch check; load average 4.4-4.7).
    """

    def __init__(self, rise: float = 0.2, fall: float = 0.2, half_life_s: float = 1.0) -> None:
        if not 0.0 < fall <= rise <= 1.0:
            raise ValueError(f"need 0 < fall <= rise <= 1, got fall {fall}, rise {rise}")
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        self.rise, self.fall, self.half_life_s = rise, fall, half_life_s
        self._level = 0.0
        self._at = 0.0

    def observe(self, now: float, seconds: float) -> None:
        """Fold in one sample taken at `now`."""
        level = self.value(now)
        weight = self.rise if seconds > level else self.fall
        self._level = level + weight * (seconds - level)
        self._at = now

    def value(self, now: float) -> float:
        """The level at `now` (0.0 before any sample)."""
        if not self._level:
            return 0.0
        return self._level * 0.5 ** (max(0.0, now - self._at) / self.half_life_s)


class CompletionMargin:
    """How much later than admission predicted the answers reached their clients: the
    `quantile` of the recent errors, which admission adds to every prediction.

    Admission predicts with mean batch times, and the tail of real batch times, of the worker
    hand-off and of the front end's jitter is not in them: with every admitted request
    predicted on time, a model run at its capacity still answered a fifth of them late. An
    answer's error is when its client saw it less when admission said it would be out; the
    p99 of the errors of the last `window_s` is the margin a prediction needs for 99% of the
    admitted answers to be on time, measured rather than searched for. (It replaced an AIMD
    share of the deadline steered by the late answers, Clipper-style, whose cut-and-grow cycle
    left whole seconds of a surge past the SLO: 67-90% of ResNet-18's surge windows within it.)
    Errors age out of the window, so a margin that refused everything comes back to zero
    within `window_s` with no answer to learn from. The quantile is worked out at most every
    `refresh_s`: admission asks on every arrival.
    """

    def __init__(self, window_s: float = 1.0, quantile: float = 0.99, refresh_s: float = 0.05,
                 max_samples: int = 4096) -> None:
        if window_s <= 0 or refresh_s < 0 or not 0.0 < quantile <= 1.0 or max_samples < 1:
            raise ValueError("need window_s > 0, refresh_s >= 0, 0 < quantile <= 1, "
                             "max_samples >= 1")
        self.window_s, self.quantile, self.refresh_s = window_s, quantile, refresh_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._margin = 0.0
        self._worked_out = float("-inf")

    def observe(self, error_s: float, now: float) -> None:
        """One answer, seen by its client `error_s` after (negative: before) the prediction."""
        self._samples.append((now, error_s))

    def value(self, now: float) -> float:
        """Seconds to add to a predicted completion (0.0 without recent answers)."""
        if now - self._worked_out >= self.refresh_s:
            self._worked_out = now
            samples = self._samples
            while samples and samples[0][0] <= now - self.window_s:
                samples.popleft()
            errors = [error for _, error in samples]
            self._margin = max(0.0, _quantile(errors, self.quantile)) if errors else 0.0
        return self._margin


def _quantile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank: the value at least `q` of them reach)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

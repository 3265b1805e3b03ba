"""Online models of what the SLO-aware batching decides with: batch time and arrival rate.

- `LinearLatency`: batch time as `a + b * n`, least squares over the recent batches of one
  instance. A fixed part (the hops, the engine's per-call overhead) plus a per-item part is how
  batch time grows on CPU and GPU alike, and two numbers fitted over a window follow a drift
  without remembering every size separately.
- `ArrivalRate`: requests per second, from the typical gap between recent arrivals, which also
  grows while nothing arrives, so "nothing else is coming" is seen without a timer.
- `DecayingLevel`: the level of a noisy delay (the front end's event-loop lag) that follows a
  lasting rise within a few samples and forgets a single stall within a second or two.
"""

from __future__ import annotations

from collections import deque


class LinearLatency:
    """Seconds for a batch of `n` items as `a + b * n`, fitted over the last `window` batches.

    Recording a batch is on every batch's path (at one client, every request's): the fit is
    kept as running sums over the window, the sizes' sums exact in integers and the times'
    refreshed from the samples once a window so that rounding cannot build up, so a record
    costs the same whatever the window (0.7 us; four passes over 64 samples took 6.5-10.6 us)."""

    def __init__(self, window: int = 64) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None
        self._sum_n = self._sum_nn = 0  # exact
        self._sum_t = self._sum_nt = 0.0
        self._until_refresh = window

    def __bool__(self) -> bool:
        """Whether any batch has been measured."""
        return bool(self._samples)

    def record(self, size: int, seconds: float) -> None:
        """Add one measured batch and refit."""
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        seconds = max(0.0, seconds)
        samples = self._samples
        if len(samples) == samples.maxlen:
            old_n, old_t = samples[0]
            self._sum_n -= old_n
            self._sum_nn -= old_n * old_n
            self._sum_t -= old_t
            self._sum_nt -= old_n * old_t
        samples.append((size, seconds))
        self._sum_n += size
        self._sum_nn += size * size
        self._sum_t += seconds
        self._sum_nt += size * seconds
        self._until_refresh -= 1
        if self._until_refresh <= 0:
            self._sum_t = sum(t for _, t in samples)
            self._sum_nt = sum(n * t for n, t in samples)
            self._until_refresh = len(samples)
        self._fit = _least_squares(len(samples), self._sum_n, self._sum_nn, self._sum_t,
                                   self._sum_nt)

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


def _least_squares(count: int, sum_n: int, sum_nn: int, sum_t: float,
                   sum_nt: float) -> tuple[float, float]:
    """(a, b) minimising the squared error of `a + b * n` over `count` samples given by their
    sums, with both kept >= 0.

    With a single size measured there is no slope to fit: the time is taken as proportional to
    the size (b = t / n), which errs towards larger batches costing more. A negative slope
    (noise over a narrow range of sizes) or intercept is clipped: batch time never falls as
    batches grow, and is never below zero for one item.
    """
    mean_n = sum_n / count
    mean_t = sum_t / count
    spread_n = count * sum_nn - sum_n * sum_n  # count^2 x the variance of n, exact
    if spread_n == 0:
        return 0.0, max(0.0, mean_t) / mean_n
    b = max(0.0, (count * sum_nt - sum_n * sum_t) / spread_n)
    a = mean_t - b * mean_n
    if a < 0.0:  # keep the line through the mean, pivoting to a zero intercept
        a, b = 0.0, max(0.0, mean_t) / mean_n
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


class SloFeedback:
    """The share of a request's deadline admission may plan to fill, steered by the answers.

    Admission predicts with mean batch times, and the tail of real batch times and of the front
    end's jitter is not in them: with every admitted request predicted on time, a model run
    at its capacity still answered a fifth of them late. So the answers close the loop, the way
    Clipper sizes its batches (additive increase, multiplicative decrease): when more than
    `target_miss` of a window's answers missed the SLO, the share is cut by `decrease`; while
    at most half that many miss, it grows back by `increase` a window, up to the whole deadline.
    A window with fewer than `min_answers` answers cuts nothing, and grows the share if none of
    them missed; so does a window with no answer at all (read through `value`): a share cut so
    low that it refused everything would otherwise never hear an answer to grow back on.
    A window whose misses already reach `early_misses` and pass `target_miss` of its answers
    cuts at once and starts a new window: waiting for the window's end let a surge's first
    quarter second be admitted on the whole deadline (p99 122 ms in ResNet-18's first surge
    second). Answers to requests that arrived before a cut are not counted (they were admitted
    under the old share; one cut per overshoot, as TCP cuts once per round trip).
    """

    def __init__(self, window_s: float = 0.25, target_miss: float = 0.01, decrease: float = 0.75,
                 increase: float = 0.03, floor: float = 0.3, min_answers: int = 20,
                 early_misses: int = 5) -> None:
        if not 0.0 < floor <= 1.0 or not 0.0 < decrease < 1.0 or increase <= 0 or window_s <= 0:
            raise ValueError("need 0 < floor <= 1, 0 < decrease < 1, increase > 0, window_s > 0")
        self.window_s, self.target_miss, self.min_answers = window_s, target_miss, min_answers
        self.decrease, self.increase, self.floor = decrease, increase, floor
        self.early_misses = early_misses
        self.share = 1.0
        self._start: float | None = None
        self._answers = self._missed = 0
        self._cut_at = float("-inf")

    def observe(self, met: bool, now: float, arrival: float | None = None) -> None:
        """One answer, on time or not, given at `now` to a request that arrived at `arrival`."""
        if arrival is not None and arrival < self._cut_at:
            return
        self._roll(now)
        self._answers += 1
        self._missed += not met
        if self._missed >= self.early_misses and self._missed > self.target_miss * self._answers:
            self.share = max(self.floor, self.share * self.decrease)
            self._cut_at = self._start = now
            self._answers = self._missed = 0

    def value(self, now: float) -> float:
        """The share at `now`, the windows passed since the last answer counted."""
        self._roll(now)
        return self.share

    def _roll(self, now: float) -> None:
        if self._start is None:
            self._start = now
            return
        passed = int((now - self._start) / self.window_s)
        if passed < 1:
            return
        self._close_window()
        if passed > 1:  # windows without a single answer: nothing was late
            self.share = min(1.0, self.share + (passed - 1) * self.increase)
        self._start += passed * self.window_s

    def _close_window(self) -> None:
        missed = self._missed / self._answers if self._answers else 0.0
        if self._answers >= self.min_answers and missed > self.target_miss:
            self.share = max(self.floor, self.share * self.decrease)
            if self._start is not None:  # the window's end: what arrived before it is old news
                self._cut_at = self._start + self.window_s
        elif missed <= self.target_miss / 2 and (self._answers >= self.min_answers
                                                 or not self._missed):
            self.share = min(1.0, self.share + self.increase)
        self._answers = self._missed = 0

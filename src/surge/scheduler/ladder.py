"""The accuracy ladder: which variant of a model answers the next request while load surges.

A model may list a ladder of variants (`config.yaml`: `ladder: [original, int8-static, ...]`),
all loaded and warm, each with its measured accuracy. `LadderController` is a pure state
machine over them (no clocks or sockets; the caller hands in `now` and the arrival rate):

- every `interval_s` it predicts the p99 latency of the current mix at the measured arrival
  rate from each rung's batch-time model; once that has stayed above the SLO for `down_hold_s`
  (at once when the arrival rate itself has risen `surge_ratio` times over the last calm
  decision's) it moves down, in one decision, to the least share of cheaper rungs predicted
  within the SLO (in steps of `step`), but only onto rungs whose accuracy lies within
  `max_accuracy_drop` of the top rung, so the budget holds for every answer (and their mean).
  What the lowest usable rung cannot absorb is left to admission control, which sheds it;
  when no mix is within the SLO and the bottom is predicted no better than the current level
  (a cheaper rung measured slower), nothing moves. A rung is priced with its live instances,
  and a share on one left with none moves off it at once (`rescue_level`);
- it moves a step back up only after the mix one step up has been predicted within
  `up_margin` of the SLO for `hold_s` without a break (hysteresis: a surge that pauses for a
  moment does not bounce traffic back to the expensive rung). That prediction prices each rung
  at the better of its batch times now and its *settled* ones, those it showed at the last
  decision where it took all the unpinned traffic: rungs share the cores, and a rung taking a
  small share computes its few batches beside the others' (measured: ResNet-18's original
  at a quarter of half load took 2.5 times as long a batch as when it took all of it), so
  priced by its times now the ladder never climbed back after a surge. Should a step up
  then meet pressure within `hold_s`, the settled times misled it and are dropped;
- `choose(pinned)` routes one request: a pinned one to its rung, always; the others by the
  current shares, deterministically (smooth weighted round robin), so a share of 0.25 sends
  exactly every fourth request down.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from functools import partial

# Seconds for a batch of `size` items on rung `name`; None before the rung was measured.
LatencyModel = Callable[[str, int], float | None]
# Instances of rung `name` taking batches now (lost ones compute nothing).
LiveInstances = Callable[[str], int]
QUICK_NOISE_SD = 3.0  # how far past Poisson noise the quick window's count must lie (WindowRate)
SETTLE_EVERY_S = 0.25  # how often the settled batch times are taken (see LadderController)


@dataclass(frozen=True)
class Rung:
    """One variant on the ladder."""

    name: str
    accuracy: float  # the headline metric, percent (higher is better)
    workers: int = 1  # instances computing its batches in parallel
    max_batch: int = 1  # largest batch it computes


@dataclass(frozen=True)
class LadderSettings:
    """How the controller moves (times in seconds)."""

    slo_s: float  # the model's p99 objective
    max_accuracy_drop: float  # points below the top rung a rung may be and still take traffic
    step: float = 0.25  # granularity of the shares (a move up is one step per decision)
    interval_s: float = 0.05  # least time between two decisions
    hold_s: float = 2.0  # the calm one step up must last this long before moving up
    # The pressure (predicted past the SLO) must last this long before the first step down:
    # one slow stretch of batches at half load (another process taking the core) inflates the
    # fitted batch time for a moment and, measured, moved traffic down with no surge at all.
    # The fit spans the last 64 batches, most of a second at a few hundred requests/s; a real
    # surge still moves all the way down a two-rung ladder in 0.65 s (+ 3 intervals).
    down_hold_s: float = 0.5
    # ...but a measured rise of the arrival rate by this factor over the last calm decision's
    # is a surge, not a blip: waiting out the hold then let 0.5 s of a 3x surge queue on the
    # expensive rung. (Before any calm decision every pressure counts as a surge.)
    surge_ratio: float = 1.5
    up_margin: float = 0.6  # "calm": the mix one step up predicted within this share of the SLO
    # Plan rungs at most this busy: near saturation Poisson queueing, not the batch time,
    # makes the p99.
    max_utilisation: float = 0.8

    def __post_init__(self) -> None:
        if self.slo_s <= 0:
            raise ValueError(f"slo_s must be > 0, got {self.slo_s}")
        if self.max_accuracy_drop < 0:
            raise ValueError(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}")
        if not 0.0 < self.step <= 1.0:
            raise ValueError(f"step must be in (0, 1], got {self.step}")
        if not 0.0 < self.up_margin <= 1.0 or not 0.0 < self.max_utilisation <= 1.0:
            raise ValueError("up_margin and max_utilisation must be in (0, 1]")
        if self.surge_ratio <= 1.0:
            raise ValueError(f"surge_ratio must be > 1, got {self.surge_ratio}")
        if self.hold_s < 0 or self.down_hold_s < 0:
            raise ValueError("hold_s and down_hold_s must be >= 0")


def usable_rungs(rungs: Sequence[Rung], max_drop: float) -> tuple[Rung, ...]:
    """The top rung and every rung within `max_drop` points of its accuracy, in ladder order."""
    if not rungs:
        raise ValueError("a ladder needs at least one rung")
    top = rungs[0].accuracy
    return (rungs[0], *(r for r in rungs[1:] if top - r.accuracy <= max_drop + 1e-9))


def shares_at(level: float, rungs: int) -> tuple[float, ...]:
    """Traffic share per rung at `level` (0: all on the top rung; 1.5: half on rung 1, half on
    rung 2): at most two neighbouring rungs take traffic."""
    level = min(max(level, 0.0), rungs - 1)
    low = math.floor(level)
    shares = [0.0] * rungs
    shares[low] = 1.0 - (level - low)
    if low + 1 < rungs:
        shares[low + 1] = level - low
    return tuple(shares)


def rung_p99(rate: float, batch_time: Callable[[int], float | None], rung: Rung,
             max_utilisation: float) -> float:
    """Predicted p99 seconds of one rung taking `rate` items/s.

    The smallest batch whose throughput keeps the rung under `max_utilisation` at that rate
    is the batch it settles at; a request then waits for the batch in progress and computes in
    the next one: twice its time. Infinite when no batch keeps up; 0.0 while unmeasured (no
    model, no move).
    """
    for size in range(1, rung.max_batch + 1):
        seconds = batch_time(size)
        if seconds is None:
            return 0.0
        if rate <= 0.0 or size * rung.workers * max_utilisation >= rate * seconds:
            return 2.0 * seconds
    return math.inf


class WindowRate:
    """Items (rows) per second: the count over the last `window_s`, or over the last `quick_s`
    when that count lies past what Poisson noise around the long window's rate explains
    (`QUICK_NOISE_SD` standard deviations). Counts, so Poisson arrivals read right: a median
    gap would read them 1/ln 2 = 1.44 times too fast.

    The quick window sees a surge within a tenth of a second: over the long window alone a
    3x surge read as a ramp for half a second, so the ladder moved down step by step behind it
    while the expensive rung took most of the surge's first half second. A fall still takes the
    long window to show, which is the side where waiting costs nothing. Taken as the larger of
    the two always, the quick window's own noise read a steady Poisson stream too fast (at
    390/s: 1.05x on average, 1.26x in one read of 20, up to 1.56x), which moved ResNet-18's
    ladder down at half load with no surge.

    An arrival costs two appends (it is on every request's path); the windows are moved and
    counted only when a rate is read (once per controller decision)."""

    def __init__(self, window_s: float = 0.5, quick_s: float | None = 0.1) -> None:
        if window_s <= 0 or (quick_s is not None and not 0 < quick_s <= window_s):
            raise ValueError(f"need 0 < quick_s <= window_s, got {quick_s} and {window_s}")
        self.window_s, self.quick_s = window_s, quick_s
        self._times: list[float] = []
        self._total: list[int] = []  # items that arrived up to and including each arrival
        self._sum = 0
        self._dropped = 0  # items of the arrivals forgotten from the front of the lists

    def arrive(self, now: float, items: int = 1) -> None:
        self._times.append(now)
        self._sum += items
        self._total.append(self._sum)

    def rate(self, now: float) -> float:
        self._forget(now - self.window_s)  # what is left is the long window
        long = (self._sum - self._dropped) / self.window_s
        if self.quick_s is None:
            return long
        quick, expected = self._since(now - self.quick_s), long * self.quick_s
        if quick > expected + QUICK_NOISE_SD * math.sqrt(max(expected, 1.0)):
            return quick / self.quick_s
        return long

    def _since(self, start: float) -> int:
        """Items that arrived after `start`."""
        first = bisect_right(self._times, start)
        before = self._total[first - 1] if first else self._dropped
        return self._sum - before

    def _forget(self, start: float) -> None:
        old = bisect_right(self._times, start)
        if old:
            self._dropped = self._total[old - 1]
            del self._times[:old], self._total[:old]


class LadderController:
    """Moves a share of the traffic down the ladder under load, and back up with hysteresis."""

    def __init__(self, rungs: Sequence[Rung], settings: LadderSettings,
                 latency: LatencyModel, live: LiveInstances | None = None) -> None:
        self.rungs = usable_rungs(rungs, settings.max_accuracy_drop)
        self._live = live  # None: every rung at its configured instances
        self.excluded = tuple(r.name for r in rungs if r not in self.rungs)
        self.names = tuple(r.name for r in rungs)
        self.settings = settings
        self._latency = latency
        self.level = 0.0
        self.predicted_p99 = 0.0  # of the current mix, at the last decision
        self._credit = [0.0] * len(self.rungs)
        self._shares = shares_at(0.0, len(self.rungs))
        self._decided = -math.inf
        self._calm_since: float | None = None
        self._pressed_since: float | None = None  # predicted past the SLO since
        self._calm_rate = 0.0  # the arrival rate at the last decision within the SLO
        # Per rung, its batch times by size at the last decision where it took all the
        # unpinned traffic (see the module docstring), and when the last step up was made.
        self._settled: dict[str, tuple[float | None, ...]] = {}
        self._settled_at = -math.inf  # taken at most every SETTLE_EVERY_S: max batch reads each
        self._stepped_up = -math.inf

    @property
    def top(self) -> str:
        return self.rungs[0].name

    @property
    def depth(self) -> float:
        """The lowest level: all unpinned traffic on the last usable rung."""
        return float(len(self.rungs) - 1)

    def shares(self) -> dict[str, float]:
        """Share of the unpinned traffic each usable rung takes now."""
        return dict(zip((r.name for r in self.rungs), self._shares, strict=True))

    @property
    def saturated(self) -> bool:
        """At the bottom of the budget and still predicted past the SLO: admission sheds."""
        return self.level >= self.depth and self.predicted_p99 > self.settings.slo_s

    def predict(self, level: float, rate: float, settled: bool = False) -> float:
        """Predicted p99 seconds of the mix at `level` under `rate` items/s; with `settled`,
        each rung at the better of its batch times now and its settled ones."""
        worst = 0.0
        for rung, share in zip(self.rungs, shares_at(level, len(self.rungs)), strict=True):
            if share > 0.0:
                batch_time = self._settled_time(rung.name) if settled else partial(
                    self._latency, rung.name)
                worst = max(worst, rung_p99(rate * share, batch_time, self._as_live(rung),
                                            self.settings.max_utilisation))
        return worst

    def _as_live(self, rung: Rung) -> Rung:
        """`rung` with the instances it has now: priced at its configured ones, a rung whose
        instances were lost kept its share, and its requests queued for a restart."""
        live = rung.workers if self._live is None else max(0, self._live(rung.name))
        return rung if live == rung.workers else replace(rung, workers=live)

    def _stranded(self, level: float | None = None) -> bool:
        """Whether a rung taking a share at `level` (default: now) has no live instance."""
        shares = self._shares if level is None else shares_at(level, len(self.rungs))
        return any(share > 0.0 and self._as_live(rung).workers == 0
                   for rung, share in zip(self.rungs, shares, strict=True))

    def rescue_level(self, rate: float) -> float:
        """The level nearest the current one, up or down, that gives no share to a rung
        without live instances, one predicted within the SLO if any is; the current level
        when every level does (nothing can compute: the model is not ready)."""
        steps = round(self.depth / self.settings.step)
        levels = sorted({min(self.depth, i * self.settings.step) for i in range(steps + 1)}
                        | {self.depth})
        alive = [level for level in levels if not self._stranded(level)]
        if not alive:
            return self.level
        return min(alive, key=lambda level: (self.predict(level, rate) > self.settings.slo_s,
                                             abs(level - self.level), level))

    def load(self, level: float, rate: float) -> float:
        """How busy the mix at `level` keeps the cores at `rate` items/s (1.0: all of them),
        each rung at its largest batch: the rungs share the cores, so their loads add up."""
        total = 0.0
        for rung, share in zip(self.rungs, shares_at(level, len(self.rungs)), strict=True):
            seconds = self._latency(rung.name, rung.max_batch) if share > 0.0 else None
            if seconds is not None and rate > 0.0:
                capacity = self._as_live(rung).workers * rung.max_batch
                total += math.inf if capacity == 0 else rate * share * seconds / capacity
        return total

    def _settled_time(self, name: str) -> Callable[[int], float | None]:
        kept = self._settled.get(name, ())

        def batch_time(size: int) -> float | None:
            now = self._latency(name, size)
            then = kept[size - 1] if size <= len(kept) else None
            return now if then is None else then if now is None else min(now, then)
        return batch_time

    def _settle(self, now: float) -> None:
        """Keep the batch times of the rung taking all the unpinned traffic."""
        if 1.0 in self._shares and now - self._settled_at >= SETTLE_EVERY_S:
            self._settled_at = now
            rung = self.rungs[self._shares.index(1.0)]
            self._settled[rung.name] = tuple(self._latency(rung.name, size)
                                             for size in range(1, rung.max_batch + 1))

    def due(self, now: float) -> bool:
        """Whether `update` would decide at `now` (the caller measures the rate only then)."""
        return now - self._decided >= self.settings.interval_s - 1e-9  # float ticks of it

    def update(self, now: float, rate: float) -> None:
        """Decide, at most once per `interval_s`: a step down, a step up, or stay."""
        settings = self.settings
        if not self.due(now):
            return
        self._decided = now
        self._settle(now)
        if self._stranded():  # no blip of slow batches to hold for: off that rung at once
            self._move(self.rescue_level(rate))
        self.predicted_p99 = self.predict(self.level, rate)
        if self.predicted_p99 > settings.slo_s and self.level < self.depth:
            self._calm_since = None
            if self._pressed_since is None:
                self._pressed_since = now
            surging = rate >= settings.surge_ratio * self._calm_rate
            if surging or now - self._pressed_since >= settings.down_hold_s - 1e-9:
                if now - self._stepped_up <= settings.hold_s:
                    self._settled.clear()  # the step up they priced did not hold
                self._move(self.needed_level(rate))
            return
        self._pressed_since = None
        if self.predicted_p99 <= settings.slo_s:
            self._calm_rate = rate
        up = max(0.0, self.level - settings.step)
        if self.level == 0.0 or (self.predict(up, rate, settled=True)
                                 > settings.up_margin * settings.slo_s):
            self._calm_since = None
            return
        if self._calm_since is None:
            self._calm_since = now
        elif now - self._calm_since >= settings.hold_s:
            self._move(up)
            self._calm_since = now  # the next step up needs its own calm period
            self._stepped_up = now

    def needed_level(self, rate: float) -> float:
        """The least level below the current one, in steps, predicted within the SLO at
        `rate`; when none is, the bottom of the budget, unless that is predicted no better
        than the current level (a cheaper rung measured slower, or with its instances lost,
        would answer later and less accurately): then the current level."""
        level = self.level
        while level < self.depth:
            level = min(self.depth, level + self.settings.step)
            if self.predict(level, rate) <= self.settings.slo_s:
                return level
        if self._outlook(level, rate) >= self._outlook(self.level, rate):
            return self.level
        return level

    def _outlook(self, level: float, rate: float) -> tuple[float, float]:
        """What the mix at `level` is predicted to give, worse is larger: its p99, then (both
        past capacity: infinite) how far past it the cores are."""
        return self.predict(level, rate), self.load(level, rate)

    def carry_from(self, old: LadderController, unchanged: Collection[str] = ()) -> bool:
        """Take over where `old` stands under the current load (a reload of its model): its
        level and shares, its last prediction and the clocks of its holds, so that a surge in
        progress is not met again from the top rung. False, and nothing taken, when the usable
        rungs differ: a level would mean other rungs. The settled batch times only of the
        rungs `unchanged` (same files, and settings that leave batch times); the others' may
        describe other files or settings, and each is priced settled at its times now, its
        load-time probe, instead (none at all priced the top rung's slowed small share past
        the calm margin for good)."""
        if old.names != self.names or [r.name for r in old.rungs] != [
                r.name for r in self.rungs]:
            return False
        self._move(old.level)
        self.predicted_p99, self._decided = old.predicted_p99, old._decided
        self._calm_since, self._pressed_since = old._calm_since, old._pressed_since
        self._calm_rate, self._stepped_up = old._calm_rate, old._stepped_up
        self._settled_at = old._settled_at
        self._settled = {
            r.name: old._settled[r.name] if r.name in unchanged and r.name in old._settled
            else tuple(self._latency(r.name, size) for size in range(1, r.max_batch + 1))
            for r in self.rungs}
        return True

    def _move(self, level: float) -> None:
        self.level = level
        self._credit = [0.0] * len(self.rungs)
        self._shares = shares_at(level, len(self.rungs))

    def choose(self, pinned: str | None = None) -> str:
        """The rung that computes the next request: its pin, or the next by the shares."""
        if pinned is not None:
            if pinned not in self.names:
                raise ValueError(f"{pinned!r} is not on the ladder ({', '.join(self.names)})")
            return pinned
        shares = self._shares
        if 1.0 in shares:  # one rung takes it all: no round robin to keep
            return self.rungs[shares.index(1.0)].name
        for index, share in enumerate(shares):
            self._credit[index] += share
        chosen = max(range(len(shares)), key=lambda i: (self._credit[i], -i))
        self._credit[chosen] -= 1.0
        return self.rungs[chosen].name

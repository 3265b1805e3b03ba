"""What a tune is for and may try: serving configurations, the load they face, the SLO, the
accuracy budget, the search space and the effort to spend."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from surge.errors import ConfigError
from surge.kinds import is_integer, is_number
from surge.platform import available_cores, settings_grid
from surge.repository.config import MAX_QUEUE_DELAY_MS
from surge.repository.config import ORIGINAL as ORIGINAL  # the model as exported

MAX_BATCH = 4096  # the largest batch size a search may try
MAX_INSTANCES, MAX_THREADS = 64, 256  # as config.yaml allows


@dataclass(frozen=True, order=True)
class Candidate:
    """One serving configuration: which variant, how it batches, how many workers and threads."""

    variant: str
    max_batch_size: int
    max_queue_delay_ms: float
    instances: int
    threads: int

    @property
    def key(self) -> str:
        return (f"{self.variant} b{self.max_batch_size} d{self.max_queue_delay_ms:g}ms "
                f"{self.instances}x{self.threads}t")


@dataclass(frozen=True)
class Load:
    """The load the SLO holds under: closed loop at a concurrency, or open loop at a rate."""

    concurrency: int | None = None
    rate: float | None = None  # requests per second (Poisson arrivals)
    rows: int = 1
    """Rows (batch items) per request: a ranking request carries one user's candidates. The
    scheduler counts rows against max batch, so a configuration whose max batch is below this
    cannot serve the load and is not tried."""

    def __post_init__(self) -> None:
        from surge.bench.loadgen import MAX_CONCURRENCY, MAX_RATE  # what the trials can send

        if (self.concurrency is None) == (self.rate is None):
            raise ConfigError("give exactly one of --concurrency and --rate")
        if (self.concurrency is not None and self.concurrency < 1) or (
            self.rate is not None and not self.rate > 0
        ):
            option = "--concurrency" if self.concurrency is not None else "--rate"
            raise ConfigError(f"{option} must be positive, got {self.describe()}")
        if (self.concurrency or 0) > MAX_CONCURRENCY or (self.rate or 0) > MAX_RATE:
            raise ConfigError(f"load {self.describe()} is more than one load generator sends "
                              f"(at most {MAX_CONCURRENCY:,} clients or {MAX_RATE:,.0f}/s)")
        if self.rows < 1:
            raise ConfigError(f"--rows-per-request must be at least 1, got {self.rows}")

    def describe(self) -> str:
        rows = f" x {self.rows} rows" if self.rows > 1 else ""
        if self.concurrency is not None:
            return f"{self.concurrency} concurrent clients{rows}"
        return f"{self.rate:g} requests/s{rows}"

    def requests_per_batch(self, max_batch_size: int) -> int:
        """Whole requests one batch holds at most (0: not even one fits)."""
        return max_batch_size // self.rows


@dataclass(frozen=True)
class Slo:
    """Latency objective: p99 at most `p99_ms` under `load`."""

    p99_ms: float
    load: Load

    def __post_init__(self) -> None:
        if not 0 < self.p99_ms < math.inf:  # NaN too
            raise ConfigError(f"--slo-p99 must be a positive number of ms, got {self.p99_ms:g}")


@dataclass(frozen=True)
class AccuracyBudget:
    """How much accuracy a variant may give up, on the headline `metric` (None: the task's
    first): at most `max_drop` points (percent) below the original model's value, and/or no
    lower than `min_metric`."""

    max_drop: float | None = 1.0
    min_metric: float | None = None
    metric: str | None = None

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0 <= self.max_drop < math.inf:
            raise ConfigError(f"--max-accuracy-drop {self.max_drop}: expected points >= 0, "
                              f"e.g. 1.0")
        if self.min_metric is not None and not math.isfinite(self.min_metric):
            raise ConfigError(f"--min-metric {self.min_metric}: expected a number")

    def check_range(self, metric: str, low: float, high: float) -> None:
        """Refuse a `min_metric` that `metric`, whose headline runs from `low` to `high`, can
        never reach or always does, and a `max_drop` past the whole range (no budget at all,
        or a fraction taken for points: 0.01 is a hundredth of a point)."""
        if self.max_drop is not None and math.isfinite(high - low) and self.max_drop > high - low:
            raise ConfigError(f"--max-accuracy-drop {self.max_drop:g}: {metric} runs from "
                              f"{low:g} to {high:g} (percent), so a drop is at most "
                              f"{high - low:g} points")
        if self.min_metric is None or low <= self.min_metric <= high:
            return
        if math.isfinite(low) and math.isfinite(high):
            span = f"runs from {low:g} to {high:g} (percent)"
        else:
            span = f"is at most {high:g}" if math.isfinite(high) else f"is at least {low:g}"
        raise ConfigError(f"--min-metric {self.min_metric:g}: {metric} {span}")

    def rejects(self, value: float, reference: float) -> str | None:
        """Why `value` is outside the budget when the original scores `reference`, or None."""
        drop = reference - value
        if self.max_drop is not None and drop > self.max_drop + 1e-9:
            return (f"accuracy {value:.2f} is {drop:.2f} points below the reference "
                    f"{reference:.2f} (budget {self.max_drop:g})")
        if self.min_metric is not None and value < self.min_metric:
            return f"accuracy {value:.2f} is below the minimum {self.min_metric:g}"
        return None


@dataclass(frozen=True)
class SearchSpace:
    """What the tuner may choose from: variants (made when the model has none), max batch
    sizes, queue delays and (instances, threads) layouts."""

    max_batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    delays_ms: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0)
    settings: tuple[tuple[int, int], ...] | None = None  # (instances, threads); None: all that fit
    optimize: bool = True  # make variants when the model has none
    variants: str | None = None  # what to make, in `surge optimize` names; None: a default set

    def __post_init__(self) -> None:
        if not self.max_batch_sizes or not all(_whole(v, 1, MAX_BATCH)
                                               for v in self.max_batch_sizes):
            raise ConfigError(f"max_batch_sizes {list(self.max_batch_sizes)}: give integers "
                              f"from 1 to {MAX_BATCH}, like (1, 8, 32)")
        if not self.delays_ms or not all(is_number(v) and 0 <= v <= MAX_QUEUE_DELAY_MS
                                         for v in self.delays_ms):
            raise ConfigError(f"delays_ms {list(self.delays_ms)}: give numbers from 0 to "
                              f"{MAX_QUEUE_DELAY_MS:g}, like (0.0, 1.0, 2.0)")
        if self.settings is not None and not (self.settings and all(
                len(pair) == 2 and _whole(pair[0], 1, MAX_INSTANCES)
                and _whole(pair[1], 1, MAX_THREADS) for pair in self.settings)):
            raise ConfigError(f"settings {self.settings!r}: give (instances, threads) pairs "
                              f"of at most {MAX_INSTANCES} instances of {MAX_THREADS} threads, "
                              "like ((1, 2), (2, 1))")

    def layouts(self) -> list[tuple[int, int]]:
        """The (instances, threads) layouts to try: the given ones, else every one that fits."""
        return list(self.settings) if self.settings else settings_grid(available_cores())

    def candidates(self, variants: Iterable[str], rows: int = 1) -> list[Candidate]:
        """Every combination whose max batch holds a request of `rows` rows."""
        return [c for c in build_space(variants, self.max_batch_sizes, self.delays_ms,
                                       self.layouts()) if c.max_batch_size >= rows]


def _whole(value: Any, low: int, high: int) -> bool:
    return is_integer(value) and bool(low <= value <= high)


# The fewest evaluation samples a tune takes: below 100 one sample moves an accuracy by more
# than a point, the default accuracy budget, and the variants' ranking is noise.
MIN_EVAL_SAMPLES = 100


@dataclass(frozen=True)
class Effort:
    """How much time the tune may spend, and on what."""

    budget_s: float = 600.0  # the whole tune
    profile_s: float = 0.25  # per in-process profile point
    short_run_s: float = 3.0
    full_run_s: float = 8.0
    short_runs: int = 6  # configurations served in short runs (0: straight to full runs)
    finalists: int = 2  # configurations served in full runs
    final_rounds: int = 2  # untuned vs chosen, served alternately this many times each
    eval_samples: int | None = None  # evaluate on the first N samples only

    def __post_init__(self) -> None:
        times = {"--budget": self.budget_s, "--profile-time": self.profile_s,
                 "--short-run": self.short_run_s, "--full-run": self.full_run_s}
        for option, seconds in times.items():
            if not (is_number(seconds) and 0 < seconds < math.inf):
                raise ConfigError(f"{option} {seconds!r}: expected a positive, finite number of "
                                  "seconds")
        if self.eval_samples is not None:
            self.check_samples(self.eval_samples, f"--eval-samples {self.eval_samples}")
        if self.profile_s > self.budget_s:
            raise ConfigError(f"--profile-time {self.profile_s:g} s: longer than the whole "
                              f"--budget {self.budget_s:g} s (it is spent per batch size and "
                              "setting)")
        # the served runs the tune makes whatever its budget: the untuned baseline, then the
        # untuned and the chosen configurations `final_rounds` times each (one short run too)
        must = (1 + 2 * self.final_rounds) * self.full_run_s + (
            self.short_run_s if self.short_runs else 0.0)
        if must > self.budget_s:
            raise ConfigError(
                f"--budget {self.budget_s:g} s cannot hold the runs the tune makes whatever its "
                f"budget: {1 + 2 * self.final_rounds} full runs of {self.full_run_s:g} s "
                f"(--full-run; the baseline, then --final-rounds {self.final_rounds} of the "
                f"untuned and the chosen configurations)"
                + (f" and a short run of {self.short_run_s:g} s" if self.short_runs else "")
                + f", {must:g} s: raise --budget or shorten the runs")

    @staticmethod
    def check_samples(count: int, what: str) -> None:
        """Refuse fewer than MIN_EVAL_SAMPLES evaluation samples; `what` names them."""
        if count < MIN_EVAL_SAMPLES:
            raise ConfigError(f"{what}: fewer than {MIN_EVAL_SAMPLES} samples measure no "
                              f"accuracy worth a budget (one sample is "
                              f"{100 / max(count, 1):.3g} points); give at least "
                              f"{MIN_EVAL_SAMPLES}")


def build_space(
    variants: Iterable[str],
    max_batch_sizes: Sequence[int] = (1, 4, 8, 16, 32, 64),
    delays_ms: Sequence[float] = (0.0, 1.0, 2.0, 5.0),
    settings: Sequence[tuple[int, int]] | None = None,
) -> list[Candidate]:
    """Every combination; max batch 1 takes no queue delay (there is nothing to wait for)."""
    settings = settings or settings_grid(available_cores())
    space = {
        Candidate(v, b, 0.0 if b == 1 else d, i, t)
        for v in variants for b in max_batch_sizes for d in delays_ms for i, t in settings
    }
    return sorted(space)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration_s(text: str, option: str, default_unit: str = "s") -> float:
    """'50ms', '2.5s', '10m' -> seconds; a bare number uses `default_unit`."""
    match = _DURATION.match(text)
    if not match or not 0 < float(match.group(1)) < math.inf:  # 400 digits: inf
        raise ConfigError(f"{option} {text!r}: expected a positive duration like 50ms, 30s, 10m")
    return float(match.group(1)) * _SECONDS[match.group(2) or default_unit]


def parse_rate(text: str) -> float:
    """'200/s', '200', '12000/min' -> requests per second."""
    value, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0}.get(unit.strip())
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if per is None or not 0 < rate < math.inf:
        raise ConfigError(f"--rate {text!r}: expected requests per second like 200/s")
    return rate / per

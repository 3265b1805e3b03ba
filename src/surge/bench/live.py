"""A live per-second line of what the server saw, read from its Prometheus metrics while a bench
runs: requests/s, p99 of the answered requests, goodput (answers within the model's SLO), shed
requests by reason and the variant mix of a laddered model.

    live_line(before, after, seconds) -> "  3s  412 req/s  p99 38.1 ms  goodput 405/s ..."

`MetricsSample.parse` and `live_line` are pure (text in, text out); `LiveWatch` is the thread
that polls the metrics endpoint once a second and hands each line to a printer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class MetricsSample:
    """The counters of one model at one moment (cumulative, as the server exports them)."""

    answered: float = 0.0  # successful requests
    within_slo: float = 0.0  # answered within slo_p99_ms (models with one)
    shed: dict[str, float] = field(default_factory=dict)  # by reason
    variants: dict[str, float] = field(default_factory=dict)  # answers by variant
    # Duration of the answered requests: (upper bound s, count).
    buckets: tuple[tuple[float, float], ...] = ()
    has_slo: bool = False  # the server counts its answers against an SLO (slo_p99_ms)

    @classmethod
    def parse(cls, text: str, model: str) -> MetricsSample:
        answered = within = 0.0
        has_slo = False
        shed: dict[str, float] = {}
        variants: dict[str, float] = {}
        buckets: list[tuple[float, float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("model") != model:
                    continue
                if s.name == "surge_requests_total" and s.labels.get("outcome") == "success":
                    answered += s.value
                elif s.name == "surge_slo_requests_total":
                    has_slo = True
                    within += s.value if s.labels.get("within") == "yes" else 0.0
                elif s.name == "surge_shed_requests_total":
                    shed[s.labels["reason"]] = s.value
                elif s.name == "surge_variant_requests_total":
                    variants[s.labels["variant"]] = s.value
                elif (s.name == "surge_request_duration_seconds_bucket"
                      and s.labels.get("outcome", "success") == "success"):
                    # Answered requests only: quick refusals would pull the p99 down under
                    # overload. No label: an older server's histogram of every request.
                    buckets.append((float(s.labels["le"]), s.value))
        return cls(answered, within, shed, variants, tuple(sorted(buckets)), has_slo)


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The `q` quantile of a cumulative histogram, linear inside its bucket (as Prometheus'
    histogram_quantile); None when empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (upper - lower) * share
        lower, below = upper, count
    return lower


def live_line(before: MetricsSample, after: MetricsSample, seconds: float, second: int) -> str:
    """What changed between two samples `seconds` apart, as one line."""
    per_s = max(seconds, 1e-9)
    earlier = dict(before.buckets)
    delta = [(le, count - earlier.get(le, 0.0)) for le, count in after.buckets]
    p99 = quantile(delta, 0.99)
    shed = {r: v - before.shed.get(r, 0.0) for r, v in after.shed.items()}
    shed = {r: v for r, v in shed.items() if v > 0}
    mix = {v: n - before.variants.get(v, 0.0) for v, n in after.variants.items()}
    served = sum(mix.values())
    parts = [f"{second:4d}s", f"{(after.answered - before.answered) / per_s:8.1f} req/s",
             f"p99 {p99 * 1e3:7.1f} ms" if p99 is not None else "p99       - ms",
             # a model without slo_p99_ms has no goodput: 0/s would read as none on time
             f"goodput {(after.within_slo - before.within_slo) / per_s:7.1f}/s"
             if after.has_slo else "goodput       -  ",
             f"shed {sum(shed.values()):5.0f}"
             + (" (" + ", ".join(f"{r} {v:.0f}" for r, v in sorted(shed.items())) + ")"
                if shed else "")]
    if served > 0:
        parts.append("mix " + " ".join(f"{v} {n / served:.0%}" for v, n in sorted(mix.items())))
    return "  ".join(parts)


def check_metrics(url: str, headers: dict[str, str] | None = None,
                  timeout_s: float = 5.0) -> None:
    """Read `url` once: a metrics endpoint that cannot be read is refused before the run."""
    from surge.errors import SurgeError

    try:
        response = httpx.get(url, headers=headers or {}, timeout=timeout_s)
        response.raise_for_status()
        text = response.text
        list(text_string_to_metric_families(text))
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, IndexError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SurgeError(f"--metrics-url {url!r} cannot be read ({reason})") from None


class LiveWatch:
    """Polls `url` (the server's /metrics) every `interval_s` and emits one line per poll."""

    def __init__(self, url: str, model: str, emit: Callable[[str], None],
                 interval_s: float = 1.0, headers: dict[str, str] | None = None) -> None:
        self.url, self.model, self.emit, self.interval_s = url, model, emit, interval_s
        self._headers = headers or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="surge-bench-live", daemon=True)

    def __enter__(self) -> LiveWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _sample(self, client: httpx.Client) -> MetricsSample | None:
        try:
            response = client.get(self.url, headers=self._headers)
            response.raise_for_status()
        except httpx.HTTPError as error:
            self.emit(f"live metrics unavailable: {error}")
            return None
        return MetricsSample.parse(response.text, self.model)

    def _run(self) -> None:
        with httpx.Client(timeout=max(0.5, self.interval_s)) as client:
            before, started = self._sample(client), time.monotonic()
            last, second = started, 0
            while before is not None and not self._stop.wait(self.interval_s):
                after, now = self._sample(client), time.monotonic()
                if after is None:
                    return
                second += 1
                self.emit(live_line(before, after, now - last, second))
                before, last = after, now

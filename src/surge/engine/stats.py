"""Statistics of one served model version: running counters and the snapshot the front ends get."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from surge.workers.messages import BatchDone

# (count, total ns): how Triton reports every duration.
Duration = tuple[int, int]
# (compute_input, compute_infer, compute_output) of the batches of one size.
Phases = tuple[Duration, Duration, Duration]
# Why requests failed, in Triton's words (the `reason` of nv_inference_request_failure):
# refused by the scheduler (queue full, deadline), left by their client, failed by the model's
# instance, anything else (surge/engine/failures.py says which is which).
FAIL_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass(frozen=True)
class ModelStats:
    """Triton-style statistics of one model version. Durations are (count, total ns)."""

    name: str
    version: int
    inference_count: int
    execution_count: int
    last_inference: int  # ms since the epoch, 0 before the first
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    batch_stats: dict[int, Duration] = field(default_factory=dict)
    # The fitted batch-time line and its predictions beside the measured means, per batch
    # size (see `latency_report`); empty before any batch was timed.
    latency: dict[str, object] = field(default_factory=dict)
    # The worker threads' CPU for the batches' inputs and runs, as the workers report it.
    compute_cpu: Duration = (0, 0)
    # Of compute_cpu: the model's preprocessing steps run in its workers (`preprocess:`).
    preprocess_cpu: Duration = (0, 0)
    # Per batch size: compute_input, compute_infer and compute_output (Triton's batch_stats).
    batch_phases: dict[int, Phases] = field(default_factory=dict)
    # The response cache's lookups that found an answer (with the time to copy it out) and
    # those that did not (with the time to store the answer); hits are also in `success`.
    cache_hit: Duration = (0, 0)
    cache_miss: Duration = (0, 0)
    # Of fail's count, by FAIL_REASONS; what it leaves out (a pipeline's failures, whose
    # reasons are its steps') counts as OTHER.
    fail_reasons: dict[str, int] = field(default_factory=dict)
    # Whether the version's config enables the response cache (`response_cache: true`).
    response_cache: bool = False

    def failures(self, reason: str) -> int:
        """Failed requests of one of FAIL_REASONS (OTHER: every failure no reason claims)."""
        if reason != "OTHER":
            return self.fail_reasons.get(reason, 0)
        claimed = sum(n for why, n in self.fail_reasons.items() if why != "OTHER")
        return self.fail[0] - claimed


class DurationCounter:
    """A running (count, total ns) pair."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def pair(self) -> Duration:
        return (self.count, self.ns)


class Counters:
    """Mutable running totals behind ModelStats, updated by the driver of one model version."""

    def __init__(self, response_cache: bool = False) -> None:
        self.response_cache = response_cache
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference = 0
        self.success = DurationCounter()
        self.fail = DurationCounter()
        self.fail_reasons: dict[str, int] = {}
        self.queue = DurationCounter()
        self.compute_input = DurationCounter()
        self.compute_infer = DurationCounter()
        self.compute_output = DurationCounter()
        self.compute_cpu = DurationCounter()
        self.preprocess_cpu = DurationCounter()
        self.cache_hit = DurationCounter()  # kept by engine.response_cache
        self.cache_miss = DurationCounter()
        self.batch_stats: dict[int, DurationCounter] = {}
        self.batch_phases: dict[int, tuple[DurationCounter, ...]] = {}
        # The line (a, b) in seconds of the slowest live instance, asked for at snapshot time.
        self.latency_line: Callable[[], tuple[float, float] | None] = lambda: None
        # Each live instance's own line, by instance (instances on different nodes differ).
        self.instance_lines: Callable[[], dict[int, tuple[float, float]]] = dict

    def count_failure(self, ns: int, reason: str) -> None:
        """One failed request (`ns` after its arrival), for one of FAIL_REASONS."""
        self.fail.add(ns)
        self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1

    def count_batch(self, size: int, done: BatchDone | None, split_ns: int, now_ms: int) -> None:
        """One computed batch of `size` items; `split_ns` is the front end's share of its output."""
        self.inference_count += size
        self.execution_count += 1
        self.last_inference = now_ms
        if done is None:
            return
        self.compute_input.add(done.input_ns)
        self.compute_infer.add(done.infer_ns)
        self.compute_output.add(done.output_ns + split_ns)
        self.compute_cpu.add(done.cpu_ns)
        if done.preprocess_cpu_ns:
            self.preprocess_cpu.add(done.preprocess_cpu_ns)
        per_size = self.batch_stats.setdefault(size, DurationCounter())
        per_size.add(done.input_ns + done.infer_ns + done.output_ns)
        phases = self.batch_phases.get(size)
        if phases is None:
            phases = self.batch_phases[size] = tuple(DurationCounter() for _ in range(3))
        for counter, ns in zip(phases, (done.input_ns, done.infer_ns, done.output_ns + split_ns),
                               strict=True):
            counter.add(ns)

    def snapshot(self, name: str, version: int) -> ModelStats:
        return ModelStats(
            name, version, self.inference_count, self.execution_count, self.last_inference,
            self.success.pair(), self.fail.pair(), self.queue.pair(),
            self.compute_input.pair(), self.compute_infer.pair(), self.compute_output.pair(),
            {size: counter.pair() for size, counter in sorted(self.batch_stats.items())},
            latency_report(self.latency_line(), self.batch_stats, self.instance_lines()),
            compute_cpu=self.compute_cpu.pair(), preprocess_cpu=self.preprocess_cpu.pair(),
            batch_phases={size: _phases(counters)
                          for size, counters in sorted(self.batch_phases.items())},
            cache_hit=self.cache_hit.pair(), cache_miss=self.cache_miss.pair(),
            fail_reasons=dict(self.fail_reasons), response_cache=self.response_cache,
        )


def _phases(counters: tuple[DurationCounter, ...]) -> Phases:
    phase_input, infer, output = (counter.pair() for counter in counters)
    return (phase_input, infer, output)


def latency_report(line: tuple[float, float] | None, measured: dict[int, DurationCounter],
                   instances: dict[int, tuple[float, float]] | None = None) -> dict[str, object]:
    """The fitted `a + b * n` in ms (the slowest live instance's, and each instance's own), and
    per measured batch size the predicted and the mean measured ms (the worker's own time:
    the fit also counts the hops, so it runs a little above)."""
    if line is None:
        return {}
    a, b = line
    sizes = {
        str(size): {"predicted_ms": round((a + b * size) * 1e3, 4),
                    "measured_ms": round(c.ns / c.count / 1e6, 4) if c.count else None}
        for size, c in sorted(measured.items())
    }
    lines = {str(i): {"a_ms": round(ia * 1e3, 4), "b_ms": round(ib * 1e3, 4)}
             for i, (ia, ib) in sorted((instances or {}).items())}
    return {"a_ms": round(a * 1e3, 4), "b_ms": round(b * 1e3, 4), "sizes": sizes,
            "instances": lines}

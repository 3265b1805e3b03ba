"""Declared data the scheduler works on: queued requests, batches, its own config."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from surge.errors import InputError, shown

# The level V2 priority 0 ("default", as in Triton) is served at: levels 1..7 go before default
# traffic, larger numbers after it.
DEFAULT_PRIORITY_LEVEL = 8
MAX_PRIORITY = 2**64 - 1  # the V2 `priority` parameter is a uint64, as in Triton
# What a deadline passing in the queue does (Triton's `timeout_action`, lower case).
TIMEOUT_ACTIONS = ("reject", "delay")

# (input name, dtype, shape without the batch dim) for every input: requests share a batch only
# when their keys are equal.
ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]


def priority_level(priority: object) -> int:
    """The level a request of V2 `priority` is queued at (0, the default, is
    DEFAULT_PRIORITY_LEVEL). InputError for anything but an integer from 0 to MAX_PRIORITY:
    the Python API passes the caller's value as it is, and a string or a float would be no
    level at all, or a level the config's keys cannot name."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
            0 <= priority <= MAX_PRIORITY):
        raise InputError(f"priority must be an integer from 0 to {MAX_PRIORITY} (0 = the "
                         f"default level), got {shown(priority)}")
    return priority or DEFAULT_PRIORITY_LEVEL


def check_timeout(timeout_us: int | None) -> None:
    """InputError for a negative `timeout` (microseconds; None or 0: none)."""
    if timeout_us is not None and timeout_us < 0:
        raise InputError(f"timeout must be >= 0 microseconds, got {timeout_us}")


def check_options(priority: int, timeout_us: int | None) -> None:
    """InputError for a priority or timeout the queue would refuse, where an answer or a wait
    comes before the queue (a cache hit, a sequence's wait, an on-demand load)."""
    priority_level(priority)
    check_timeout(timeout_us)


@dataclass(frozen=True)
class LevelPolicy:
    """One priority level's own queue rules; None leaves a rule to the model's queue."""

    max_queue_size: int | None = None  # requests of this level queued at once
    default_timeout_s: float | None = None  # deadline for this level's requests that bring none
    name: str = ""  # how refusals name the level to the client (the level as it was configured)
    # What a passed deadline does to this level's queued requests: "reject" (answered 504) or
    # "delay" (kept, behind the level's requests still in time); None follows the model's.
    timeout_action: str | None = None
    # Whether a request's own `timeout` replaces the default one; None follows the model's.
    allow_timeout_override: bool | None = None

    def __post_init__(self) -> None:
        if self.timeout_action not in (None, *TIMEOUT_ACTIONS):
            raise ValueError(f"{self.name or 'a level'}: timeout_action must be one of "
                             f"{TIMEOUT_ACTIONS}, got {self.timeout_action!r}")
        if self.max_queue_size is not None and self.max_queue_size < 1:
            raise ValueError(f"{self.name or 'a level'}: max_queue_size must be >= 1, got "
                             f"{self.max_queue_size}")
        if self.default_timeout_s is not None and not self.default_timeout_s > 0:
            raise ValueError(f"{self.name or 'a level'}: default_timeout_s must be > 0, got "
                             f"{self.default_timeout_s}")


@dataclass(frozen=True)
class SchedulerConfig:
    """The batching and admission rules of one model's queue (times in seconds)."""

    max_batch_size: int = 1  # items per batch; 1 with batching off
    max_queue_delay_s: float = 0.002  # longest the oldest request waits for others to join
    preferred_batch_sizes: tuple[int, ...] = ()  # dispatch at once when one of these is reached
    max_queue_size: int = 256  # queued requests beyond this are rejected
    default_timeout_s: float | None = None  # deadline for requests that bring none
    workers: int = 1  # batches computed in parallel, for the completion-time prediction
    ewma_alpha: float = 0.2  # weight of the newest measurement in the compute-time average
    # A measured batch counts as at most this multiple of the estimate (a stall is no news).
    outlier_multiple: float = 4.0
    # Least time between two probes: requests admitted although the estimate refused them,
    # because the model was idle (the estimate is stale); their time replaces the estimate.
    probe_interval_s: float = 1.0
    retries: int = 1  # times a request is sent back to the queue after its worker hung
    # The model's latency objective (`slo_p99_ms`): with one, partial batches wait by
    # `policy.slo_wait` instead of the fixed delay.
    slo_s: float | None = None
    # Share of the SLO the batching plans to use; the rest absorbs the spread of batch times
    # around the fitted line (the SLO is a p99, the fit a mean).
    slo_headroom: float = 0.8
    # Levels with rules of their own (a bound on their queued requests, a default deadline),
    # by the level requests are queued at (`Request.priority`).
    priorities: Mapping[int, LevelPolicy] = field(default_factory=dict)
    # Levels without rules of their own: what a passed deadline does ("reject": answered 504;
    # "delay": kept queued behind the requests still in time) and whether a request's own
    # `timeout` replaces the default one.
    timeout_action: str = "reject"
    allow_timeout_override: bool = True

    def __post_init__(self) -> None:
        if self.timeout_action not in TIMEOUT_ACTIONS:
            raise ValueError(f"timeout_action must be one of {TIMEOUT_ACTIONS}, got "
                             f"{self.timeout_action!r}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.slo_s is not None and self.slo_s <= 0:
            raise ValueError(f"slo_s must be > 0, got {self.slo_s}")
        if not 0.0 < self.slo_headroom <= 1.0:
            raise ValueError(f"slo_headroom must be in (0, 1], got {self.slo_headroom}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside 1..{self.max_batch_size}")


def shape_key(inputs: Mapping[str, np.ndarray], batched: bool) -> ShapeKey:
    """What must match for two requests to be computed in one batch."""
    return tuple(
        (name, array.dtype.str, tuple(array.shape[1:] if batched else array.shape))
        for name, array in sorted(inputs.items())
    )


@dataclass(frozen=True, eq=False)
class Request:
    """One queued inference request. `id` is unique per scheduler; `seq` orders arrivals."""

    id: int
    inputs: Mapping[str, np.ndarray]
    batch_size: int  # items this request brings (its dim 0; 1 for non-batched models)
    key: ShapeKey
    arrival: float
    deadline: float | None = None
    priority: int = 0  # lower is served first; 0 is the default level
    outputs: tuple[str, ...] | None = None  # requested outputs; None = all
    request_id: str = ""  # the client's id, for logs
    retries: int = 0  # times a hung worker's batch sent it back to the queue
    # Its deadline passed in a queue whose timeout_action is "delay": it waits behind the
    # requests of its level still in time (and has no deadline any more).
    delayed: bool = False


@dataclass(frozen=True, eq=False)
class Batch:
    """Requests computed together; request i owns rows offsets[i]:offsets[i+1] of each tensor."""

    id: int
    requests: tuple[Request, ...]
    offsets: tuple[int, ...]
    dispatched: float
    batched: bool = True

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def split(self, outputs: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Per-request outputs, in `requests` order, copied out of the batch buffers.

        Copies because the batch buffers are reused (shared-memory slots) once this returns.
        """
        if not self.batched:  # one request, whole tensors
            (request,) = self.requests
            names = request.outputs if request.outputs is not None else outputs.keys()
            return [{n: np.array(outputs[n], copy=True) for n in names}]
        results = []
        for i, request in enumerate(self.requests):
            start, stop = self.offsets[i], self.offsets[i + 1]
            names = request.outputs if request.outputs is not None else outputs.keys()
            results.append({n: outputs[n][start:stop].copy() for n in names})
        return results

    def refused(self, rows: Iterable[tuple[int, str]]) -> dict[int, str]:
        """Request index -> the error of its first refused row, from (batch row, error) pairs;
        the row is named within the request when the request brings several."""
        found: dict[int, str] = {}
        for row, error in rows:
            i = bisect.bisect_right(self.offsets, row) - 1
            if i in found or not 0 <= i < len(self.requests):
                continue
            start, stop = self.offsets[i], self.offsets[i + 1]
            found[i] = error if stop - start == 1 else f"{error} (row {row - start})"
        return found


@dataclass(frozen=True)
class Completed:
    """What `Scheduler.complete` hands back: a request and its own outputs."""

    request: Request
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

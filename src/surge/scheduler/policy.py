"""When a partial batch waits for more requests and when it goes: the batching policies.

Pure functions of what the scheduler knows (queue, fitted batch time, arrival gap), so each is
tested with plain numbers.

- `slo_wait` (a model with `slo_p99_ms`): a worker with nothing to do gets the queue at once
  (what arrives while it computes forms the next, larger batch). Only a batch that would wait
  in a busy worker's second slot waits for more, while more requests are coming and the batch
  as it stands cannot keep up with them, and never so long that the oldest request's predicted
  completion passes the SLO. So batches grow with load and light traffic pays no delay.
- `static_due` (no SLO): today's fixed `max_queue_delay_ms`, except that a batch does not wait
  for a request the arrival rate says will come after the delay has run out anyway (one
  closed-loop client would otherwise pay the full delay on every request).
- `late_requests` (any model, at dispatch): which requests of a batch about to go would finish
  past their deadline, so they are refused instead of computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from surge.scheduler.types import Request


@dataclass(frozen=True)
class QueueView:
    """What a batching decision sees of one shape key's queue (times in seconds)."""

    items: int  # queued rows
    oldest_age: float  # how long the oldest queued request has waited
    gap: float | None  # expected time to the next arrival; None when unknown
    workers: int  # instances computing in parallel
    idle: int = 0  # instances with nothing at all to do (not even a batch computing)


def slo_wait(view: QueueView, batch_time: Callable[[int], float | None], slo_s: float,
             max_batch: int) -> float:
    """Seconds the queue should still wait for more requests; 0.0 means dispatch now.

    Dispatch now when the batch is full, when an instance has nothing to do (waiting would
    leave it idle: measured, a closed-loop client otherwise waits for a request that only its
    own answer brings), when nothing is known to be coming, when batch time is
    not known yet, when the batch keeps pace with arrivals (`items * workers` per batch time is
    at least the arrival rate), or when waiting for the next request would put the oldest past
    `slo_s`. Otherwise wait, at most until that last bound would be reached.
    """
    items = min(view.items, max_batch)
    if items >= max_batch or view.idle > 0 or view.gap is None:
        return 0.0
    now_time, next_time = batch_time(items), batch_time(items + 1)
    if now_time is None or next_time is None:
        return 0.0
    slack = slo_s - view.oldest_age - view.gap - next_time
    if slack <= 0.0:
        return 0.0
    if items * view.workers * view.gap >= now_time:  # keeps pace: more waiting is pure latency
        return 0.0
    return slack


def static_due(oldest_age: float, delay_s: float, gap: float | None, since_last: float) -> bool:
    """Whether a partial batch goes now under the fixed delay rule.

    It goes once the oldest request waited `delay_s`, or when the next request is expected
    (`gap` after the last arrival, `since_last` ago) only after the delay would have run out.
    Without a measured gap the delay is waited as before.
    """
    if oldest_age >= delay_s:
        return True
    if gap is None:
        return False
    return gap - since_last > delay_s - oldest_age


def late_requests(requests: Sequence[Request], start: float,
                  batch_time: Callable[[int], float | None], exempt: int | None = None
                  ) -> frozenset[int]:
    """Ids of the requests to refuse rather than compute, of a batch that starts at `start`.

    A request finishes at `start` plus the batch time of what is computed with it. The earliest
    deadlines are dropped first until every remaining request finishes by its own: each drop
    makes the batch shorter, and dropping the tightest deadline is the drop that keeps the most
    requests. Requests without a deadline, the `exempt` one (a probe admitted to re-measure a
    stale estimate) and every request while batch time is unknown are kept.
    """
    dated = [(r.deadline, r.id, r.batch_size) for r in requests
             if r.deadline is not None and r.id != exempt]
    size = sum(r.batch_size for r in requests)
    whole = batch_time(size) if dated else None
    if whole is None or min(dated)[0] >= start + whole:  # the common case: all on time
        return frozenset()
    late: list[int] = []
    for deadline, request_id, rows in sorted(dated):
        seconds = batch_time(size)
        if seconds is None or deadline >= start + seconds:
            break
        late.append(request_id)
        size -= rows
    return frozenset(late)

"""One model's scheduler: a pure state machine over a bounded priority queue.

No sockets, threads or clocks: the caller hands in `now` (seconds, monotonic) and acts on what
comes back. The driver's loop is

    expired = expire(now)                       # answer these with DeadlineExceededError
    while (batch := next_batch(now, idle)):     # hand each batch to an idle worker
    late = take_late()                          # refused at dispatch: answer these too
    wake at next_wakeup(now, idle)              # or earlier, when a request or result arrives
    complete(batch, outputs, now, instance=i)   # per-request outputs; i's batch time learnt
    fail(batch)                                 # the requests to fail
    set_workers(n)                              # the pool's live instances changed
    retry(batch, now)                           # a hung worker's batch: queued again, or failed
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Container, Mapping, Sequence
from dataclasses import replace
from itertools import accumulate

import numpy as np

from surge.errors import InputError, QueueFullError
from surge.scheduler.estimate import InstanceTimes
from surge.scheduler.forecast import Forecast
from surge.scheduler.latency import ArrivalRate, SloFeedback
from surge.scheduler.policy import QueueView, late_requests, slo_wait, static_due
from surge.scheduler.queues import KeyQueue, LevelCounts
from surge.scheduler.types import Batch, Completed, Request, SchedulerConfig, ShapeKey


class Scheduler:
    """Dynamic batching, priorities, deadlines and admission control for one model."""

    def __init__(self, config: SchedulerConfig, *, batched: bool = True) -> None:
        self.config = config
        self.batched = batched
        self._queues: dict[ShapeKey, KeyQueue] = {}
        self._live: dict[int, Request] = {}
        self._deadlines: list[tuple[float, int]] = []  # (deadline, request id), lazy deletion
        self._levels = LevelCounts(config.priorities)
        self._inflight: dict[int, Batch] = {}
        self._times = InstanceTimes(config.ewma_alpha, config.outlier_multiple, config.workers)
        self._forecast = Forecast(self._times, self._inflight, config.max_batch_size)
        self.arrivals = ArrivalRate()
        # Seconds a request loses outside the scheduler (the front end's backlog before it
        # arrives and after it is answered), set by the driver; every deadline allows for it.
        self.lag_s = 0.0
        # With an SLO, the answers steer how much of a deadline admission plans to fill.
        self.slo_feedback = SloFeedback() if config.slo_s is not None else None
        self._late: list[Request] = []  # refused at dispatch, for the driver to answer
        self._probe: int | None = None  # the request admitted to re-measure a stale estimate
        self._last_probe = float("-inf")
        self._seq = 0
        self._next_batch_id = 0

    # -- state -------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Requests waiting in the queue."""
        return len(self._live)

    @property
    def inflight(self) -> int:
        """Batches handed out and not yet completed or failed."""
        return len(self._inflight)

    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self._live and not self._inflight

    @property
    def workers(self) -> int:
        """Instances computing batches in parallel, as the pool last reported them."""
        return self._times.live

    def set_workers(self, live: int) -> None:
        """The pool's live instances changed (lost, replaced, scaled): predict with them."""
        self._times.live = max(1, live)

    def batch_time(self, size: int, instance: int | None = None) -> float | None:
        """Estimated seconds for a batch of `size` items on `instance`; without one, on the
        slowest live instance (see `InstanceTimes.estimate`)."""
        return self._times.estimate(size, instance)

    def fitted_time(self, size: int) -> float | None:
        """Seconds for a batch of `size` by the slowest live instance's fitted `a + b * n`."""
        return self._times.fitted(size)

    def instance_lines(self) -> dict[int, tuple[float, float]]:
        """Each measured live instance's fitted (a, b) in seconds, by instance."""
        return self._times.lines()

    def latency_line(self) -> tuple[float, float] | None:
        """The fitted (a, b) of the slowest measured live instance; None before any batch."""
        lines = self._times.lines().values()
        return max(lines, key=lambda ab: ab[0] + ab[1] * self.config.max_batch_size,
                   default=None)

    # -- admission ---------------------------------------------------------------------------
    def add(self, request: Request, now: float) -> Request:
        """Queue `request` or raise QueueFullError at once; returns it with its deadline set.
        InputError for more rows than a batch holds."""
        if request.id in self._live:
            raise ValueError(f"request id {request.id} is already queued")
        if request.batch_size > self.config.max_batch_size:  # the client's value: a 400
            raise InputError(
                f"batch size {request.batch_size} exceeds {self.config.max_batch_size}, the most "
                "rows a batch of this model holds (1 with batching.enabled: false)")
        self.arrivals.arrive(now)  # offered load, refused requests included
        self._check_room(request.priority, now)
        request, defaulted = self._with_deadline(request, now)
        if request.deadline is not None:
            self._admit_deadline(request, request.deadline, now, defaulted)
            heapq.heappush(self._deadlines, (request.deadline, request.id))
        self._push(request)
        return request

    def _with_deadline(self, request: Request, now: float) -> tuple[Request, bool]:
        """`request` with the deadline it is queued under, and whether that is a default
        timeout's: its own `timeout` where its level lets it override the default one
        (`allow_timeout_override`), else its level's or the model's default timeout."""
        levels, config = self._levels, self.config
        if request.deadline is not None and levels.overrides(request.priority,
                                                             config.allow_timeout_override):
            return request, False
        timeout = levels.timeout(request.priority, config.default_timeout_s)
        if timeout is None:  # no default: an ignored `timeout` leaves no deadline at all
            return (request if request.deadline is None
                    else replace(request, deadline=None)), False
        return replace(request, deadline=now + timeout), True

    def _check_room(self, priority: int, now: float) -> None:
        """QueueFullError when the queue as a whole, or `priority`'s own share, is full."""
        if len(self._live) >= self.config.max_queue_size:
            raise QueueFullError(
                f"queue full ({self.config.max_queue_size} requests waiting)",
                retry_after_s=lambda: self._drain_time(now),
            )
        full = self._levels.full(priority)
        if full is not None:  # room opens as this level's requests go: the work ahead of them
            raise QueueFullError(full, retry_after_s=lambda: self._drain_time(now, priority))

    def _admit_deadline(self, request: Request, deadline: float, now: float,
                        defaulted: bool = False) -> None:
        """Raise QueueFullError when `request` is predicted to finish after `deadline`
        (`defaulted`: a default timeout's, not the client's own).

        Unless the refusal rests on the estimate alone (a worker idle, nothing queued) and no
        probe ran lately: then the estimate may be stale (measured while a worker stalled,
        say) and nothing else would ever measure it again while every request carries a
        deadline, so this request is admitted as a probe.
        """
        predicted = self.predicted_completion(request, now)
        if self.slo_feedback is not None:
            deadline = now + self.slo_feedback.value(now) * (deadline - now)
        if predicted is None or predicted <= deadline:
            return
        if self._may_probe(now):
            self._probe, self._last_probe = request.id, now
            return
        # A client on a default deadline is told whose it was, and whether its own would count.
        own = ("a `timeout` parameter sets another" if self._levels.overrides(
            request.priority, self.config.allow_timeout_override)
            else "a `timeout` parameter is ignored here: allow_timeout_override is false")
        source = (f" ({self._levels.timeout_source(request.priority)}; {own})"
                  if defaulted else "")
        raise QueueFullError(
            f"cannot meet the deadline: predicted completion in "
            f"{(predicted - now) * 1e3:.1f} ms, deadline in {(deadline - now) * 1e3:.1f} ms"
            + source, retry_after_s=lambda: self._drain_time(now), reason="predicted_miss",
        )

    def _may_probe(self, now: float) -> bool:
        return (self._probe is None and not self._live
                and len(self._inflight) < self.workers
                and now - self._last_probe >= self.config.probe_interval_s)

    def predicted_completion(self, request: Request, now: float) -> float | None:
        """When `request`'s answer would be out: wait for a busy worker, then the work queued
        ahead, then the front end's lag.

        Work ahead is every queued item at the same or a more urgent priority; None while no
        batch has been measured yet.
        """
        full_time = self.batch_time(self.config.max_batch_size)
        if full_time is None:
            return None
        items = request.batch_size + self._levels.ahead(request.priority)
        return now + self._forecast.finish_time(items, now) + self.lag_s

    def _drain_time(self, now: float, upto: int | None = None) -> float:
        """Retry-After hint: time to work off the current queue, or its levels served no
        later than `upto` (1 s before any measurement)."""
        if self.batch_time(self.config.max_batch_size) is None:
            return 1.0
        items = self._levels.rows(upto)
        return max(0.001, self._forecast.busy_wait(now) + self._forecast.work_time(items))

    def _push(self, request: Request, first: bool = False) -> None:
        queue = self._queues.get(request.key)
        if queue is None:
            queue = self._queues[request.key] = KeyQueue()
        self._seq += 1
        # A requeued request goes ahead of everything of its priority that arrived later.
        seq = -self._seq if first else self._seq
        heapq.heappush(queue.heap, (request.priority, request.delayed, seq, request))
        queue.arrived(request, first)
        queue.items += request.batch_size
        self._live[request.id] = request
        self._levels.count(request, +1)

    # -- removal -----------------------------------------------------------------------------
    def cancel(self, request_id: int) -> Request | None:
        """Remove a queued request; None when it is not queued (already dispatched or gone)."""
        request = self._live.get(request_id)
        if request is None:
            return None
        self._remove(request)
        return request

    def expire(self, now: float) -> list[Request]:
        """Remove and return the queued requests that can no longer meet their deadline.

        That is, the deadline has passed, or is closer than the earliest it could be answered
        if dispatched now (`_earliest_finish`): computing such a request would only produce an
        answer nobody waits for. Under timeout_action "delay" such a request is kept instead:
        queued again without a deadline, behind its level's requests still in time.
        """
        expired: list[Request] = []
        delayed: list[Request] = []
        taken: set[int] = set()  # a requeued request has a second deadline entry
        kept: list[tuple[float, int]] = []
        horizon = now + self._earliest_finish(now)
        while self._deadlines and self._deadlines[0][0] <= horizon:
            deadline, request_id = heapq.heappop(self._deadlines)
            request = self._live.get(request_id)
            if request is None or request_id in taken:
                continue
            if request_id == self._probe and deadline > now:  # admitted to be measured
                kept.append((deadline, request_id))
                continue
            taken.add(request_id)
            delays = self._levels.delays(request.priority, self.config.timeout_action)
            (delayed if delays else expired).append(request)
        self._remove_all([*expired, *delayed])
        for request in delayed:  # in the order their deadlines passed
            self._push(replace(request, deadline=None, delayed=True))
        for entry in kept:
            heapq.heappush(self._deadlines, entry)
        return expired

    def drain(self) -> list[Request]:
        """Remove and return every queued request (shutdown past its grace period)."""
        requests = list(self._live.values())
        self._remove_all(requests)
        return requests

    def _remove(self, request: Request) -> None:
        self._remove_all((request,))

    def _remove_all(self, requests: Sequence[Request]) -> None:
        # Rare (cancel, expiry, drain): each heap is rebuilt once however many of its requests
        # go (once a request, a deadline passing for a whole queue took seconds), so the heaps
        # keep no dead entries.
        gone: dict[ShapeKey, set[int]] = {}
        for request in requests:
            gone.setdefault(request.key, set()).add(request.id)
            del self._live[request.id]
            self._levels.count(request, -1)
            if request.id == self._probe:
                self._probe = None
        for key, ids in gone.items():
            queue = self._queues[key]
            queue.drop(ids)
            self._forget_empty(key, queue)

    def _forget_empty(self, key: ShapeKey, queue: KeyQueue) -> None:
        if not queue.heap:
            del self._queues[key]

    # -- batching ----------------------------------------------------------------------------
    def next_batch(self, now: float, idle_workers: int, spread: int = 1) -> Batch | None:
        """The next batch to compute, or None (no idle worker, or waiting for more requests).

        `idle_workers` is how many batches the workers can take now; `spread` how many
        workers have nothing at all to do: a partial batch whose delay ran out is shared
        among them rather than computed by one while the others idle.
        Call `expire(now)` first: expired requests still queued would be batched.
        """
        if idle_workers < 1 or not self._live:
            return None
        for key in sorted(self._queues, key=lambda k: self._queues[k].heap[0][:3]):
            # Looked up again each time: a dispatch may empty the key's queue and refill it
            # with the requests it delays (a new KeyQueue).
            while (queue := self._queues.get(key)) is not None and (
                    taken := self._choose(queue, now, spread)):
                batch = self._dispatch(key, queue, taken, now)
                if batch is not None:
                    return batch
        return None

    def take_late(self) -> list[Request]:
        """The requests `next_batch` refused rather than compute: the batch they would have
        joined was predicted to finish past their deadline. The driver answers them."""
        late, self._late = self._late, []
        return late

    def _choose(self, queue: KeyQueue, now: float, spread: int) -> int:
        """How many requests (from the head, in priority order) to dispatch now; 0 = wait."""
        limit = self.config.max_batch_size
        sizes = list(accumulate(e[3].batch_size for e in heapq.nsmallest(limit, queue.heap)))
        fits = bisect_right(sizes, limit)  # requests that fit one batch, in priority order
        if self._due(queue, now, spread):
            if spread > 1 and queue.items < limit:  # partial batch, several idle workers
                return max(1, bisect_right(sizes, -(-queue.items // spread)))
            return fits
        for preferred in sorted(self.config.preferred_batch_sizes, reverse=True):
            hit = bisect_left(sizes, preferred, 0, fits)
            if hit < fits and sizes[hit] == preferred:
                return hit + 1
        return 0

    def _due(self, queue: KeyQueue, now: float, spread: int) -> bool:
        """Dispatch without waiting: batch full, no batching, or the batching policy says go."""
        return self._due_at(queue, now, spread) <= now

    def _due_at(self, queue: KeyQueue, now: float, spread: int = 0) -> float:
        """When this queue's partial batch stops waiting for more requests (`now`: go now).

        `spread` is how many workers have nothing at all to do (0 when only a busy worker's
        second slot is free, or when not known)."""
        config = self.config
        if queue.items >= config.max_batch_size or config.max_batch_size == 1:
            return now
        oldest = self._oldest(queue).arrival
        if config.slo_s is not None:
            view = QueueView(queue.items, now - oldest, self.arrivals.gap(now), self.workers,
                             spread)
            wait = slo_wait(view, self._times.fitted, config.slo_s * config.slo_headroom,
                            config.max_batch_size)
            return now + wait if wait > 0.0 else now
        if static_due(now - oldest, config.max_queue_delay_s, self.arrivals.typical_gap,
                      self.arrivals.since_last(now)):
            return now
        return oldest + config.max_queue_delay_s

    def _oldest(self, queue: KeyQueue) -> Request:
        while self._live.get(queue.arrivals[0].id) is not queue.arrivals[0]:
            queue.arrivals.popleft()
        return queue.arrivals[0]

    def _dispatch(self, key: ShapeKey, queue: KeyQueue, count: int, now: float
                  ) -> Batch | None:
        """The first `count` requests as a batch, less those it would finish too late for
        (None when that is all of them)."""
        requests = tuple(heapq.heappop(queue.heap)[3] for _ in range(count))
        for request in requests:
            del self._live[request.id]
            self._levels.count(request, -1)
        queue.items -= sum(r.batch_size for r in requests)
        self._forget_empty(key, queue)
        start = now + self._forecast.first_free(now) + self.lag_s
        late = late_requests(requests, start, self.batch_time, self._probe)
        if late:
            requests = self._hold_late(requests, late)
            if not requests:
                return None
        offsets = tuple(accumulate((r.batch_size for r in requests), initial=0))
        self._next_batch_id += 1
        batch = Batch(self._next_batch_id, requests, offsets, now, self.batched)
        self._inflight[batch.id] = batch
        return batch

    def _hold_late(self, requests: tuple[Request, ...], late: Container[int]
                   ) -> tuple[Request, ...]:
        """`requests` less the `late` ones, which are delayed (timeout_action "delay": queued
        again behind their level's requests in time) or left for the driver to answer."""
        for request in requests:
            if request.id not in late:
                continue
            if self._levels.delays(request.priority, self.config.timeout_action):
                self._push(replace(request, deadline=None, delayed=True))
            else:
                self._late.append(request)
        return tuple(r for r in requests if r.id not in late)

    def batch_of(self, requests: tuple[Request, ...], now: float) -> Batch:
        """A batch of `requests` that never queued (the latency probe run on load): held in
        flight and timed on completion like any other."""
        offsets = tuple(accumulate((r.batch_size for r in requests), initial=0))
        self._next_batch_id += 1
        batch = Batch(self._next_batch_id, requests, offsets, now, self.batched)
        self._inflight[batch.id] = batch
        return batch

    def next_wakeup(self, now: float, idle_workers: int = 1) -> float | None:
        """When to call again without news: the next deadline, or a batch delay running out.

        Batch delays only count while a worker is idle; a completing batch wakes the driver
        otherwise.
        """
        times: list[float] = []
        while self._deadlines and self._deadlines[0][1] not in self._live:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            deadline, request_id = self._deadlines[0]
            # The probe is kept until its deadline itself: waking earlier would find it kept.
            times.append(deadline if request_id == self._probe
                         else deadline - self._earliest_finish(now))
        if idle_workers > 0:
            times.extend(self._due_at(q, now) for q in self._queues.values())
        return min(times) if times else None

    # -- results -----------------------------------------------------------------------------
    def complete(
        self, batch: Batch, outputs: Mapping[str, np.ndarray], now: float,
        compute_s: float | None = None, instance: int = 0,
    ) -> list[Completed]:
        """Record the batch's compute time and split its outputs back to its requests.

        `compute_s` is the time the worker spent on it; without it, the time since dispatch.
        `instance` is the one that computed it: each instance's time is learnt on its own.
        """
        self._inflight.pop(batch.id, None)
        seconds = now - batch.dispatched if compute_s is None else compute_s
        if self._holds_probe(batch):
            self._probe = None
            self._times.remeasure(instance, batch.size, seconds)
        else:
            self._times.record(instance, batch.size, seconds)
        return [Completed(r, o) for r, o in zip(batch.requests, batch.split(outputs), strict=True)]

    def requeue(self, batch: Batch, awaited: Container[int] | None = None) -> None:
        """Put the requests of a batch that never started back in the queue, in their order.

        Admission is not checked again: these requests were accepted already. With `awaited`
        (the ids whose clients still wait), the others are dropped: computed for nobody, they
        would hold room in the queue and in their priority level's bound.
        """
        self._inflight.pop(batch.id, None)
        self._push_first(tuple(r for r in batch.requests if awaited is None or r.id in awaited))

    def retry(self, batch: Batch, now: float, awaited: Container[int] | None = None
              ) -> tuple[Request, ...]:
        """Queue again, once, the requests of a batch whose worker hung; returns the others.

        A request goes back (ahead of later arrivals) while it has retries left, its deadline
        leaves time for a batch of its size (or, where it does not, its level delays a deadline
        it cannot meet: it goes back delayed) and (with `awaited`, as in `requeue`) its client
        still waits; the caller fails the ones returned. The hung batch's time is no
        measurement.
        """
        self.fail(batch)
        again = {r.id: retried for r in batch.requests
                 if (awaited is None or r.id in awaited)
                 and (retried := self._retried(r, now)) is not None}
        self._push_first(tuple(again.values()))
        return tuple(r for r in batch.requests if r.id not in again)

    def _retried(self, request: Request, now: float) -> Request | None:
        """`request` as queued again after a hang, one retry spent; None when it is not."""
        if request.retries >= self.config.retries:
            return None
        retried = replace(request, retries=request.retries + 1)
        need = self.batch_time(request.batch_size) or 0.0
        if request.deadline is None or request.deadline > now + need:
            return retried
        # Under "delay" a deadline it can no longer meet keeps it, as `expire` would.
        if self._levels.delays(request.priority, self.config.timeout_action):
            return replace(retried, deadline=None, delayed=True)
        return None

    def _push_first(self, requests: tuple[Request, ...]) -> None:
        for request in reversed(requests):  # each goes first: the first one ends first
            if request.deadline is not None:
                heapq.heappush(self._deadlines, (request.deadline, request.id))
            self._push(request, first=True)

    def fail(self, batch: Batch) -> tuple[Request, ...]:
        """Forget a batch whose computation failed; returns its requests to answer."""
        self._inflight.pop(batch.id, None)
        if self._holds_probe(batch):
            self._probe = None
        return batch.requests

    def _holds_probe(self, batch: Batch) -> bool:
        return self._probe is not None and any(r.id == self._probe for r in batch.requests)

    def _earliest_finish(self, now: float) -> float:
        """Seconds from now before a request dispatched now could be answered (0: unmeasured):
        a worker freeing up, the fastest batch ever measured, the front end's lag."""
        fastest = self._times.fastest()
        return fastest + self._forecast.first_free(now) + self.lag_s if fastest else 0.0

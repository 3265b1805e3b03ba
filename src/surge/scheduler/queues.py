"""The scheduler's queue bookkeeping: one heap per shape key, counts per priority level.

A level may carry its own policy (`LevelPolicy`, from the model's `queue.priorities`): a bound
on its queued requests, a default deadline, what a passed deadline does to its requests and
whether their own `timeout` counts. The bound is what keeps waiting low-priority
work from taking the whole queue from urgent requests.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Container, Mapping

from surge.scheduler.types import LevelPolicy, Request, SchedulerConfig

# (priority, delayed, arrival sequence, request): heap order. A delayed request (its deadline
# passed under timeout_action "delay") goes behind every request of its level still in time.
_Entry = tuple[int, bool, int, Request]
# Gone requests the arrival deque may hold past twice the queued ones before it is rebuilt:
# each rebuild is paid for by as many pushes, so the bookkeeping stays O(1) a request.
_SLACK = 32


class KeyQueue:
    """Requests of one shape key: a priority heap plus arrival order for the delay rule."""

    __slots__ = ("heap", "arrivals", "items")

    def __init__(self) -> None:
        self.heap: list[_Entry] = []
        self.arrivals: deque[Request] = deque()  # may hold gone requests; cleaned from the left
        self.items = 0

    def drop(self, ids: Container[int]) -> None:
        """Take the requests with these ids out of the heap, in one rebuild."""
        kept = [entry for entry in self.heap if entry[3].id not in ids]
        self.items -= sum(entry[3].batch_size for entry in self.heap if entry[3].id in ids)
        heapq.heapify(kept)
        self.heap = kept

    def arrived(self, request: Request, first: bool) -> None:
        """Note `request` in arrival order (`first`: ahead of every other). Requests gone from
        the heap are dropped here once they outnumber the queued ones: the deque is cleaned
        from its left only, so a request left waiting at the head (a delayed one behind a
        steady stream in time) would otherwise keep every later one, inputs and all."""
        if first:
            self.arrivals.appendleft(request)
        else:
            self.arrivals.append(request)
        if len(self.arrivals) > 2 * len(self.heap) + _SLACK:
            queued = {id(entry[3]) for entry in self.heap}
            self.arrivals = deque(r for r in self.arrivals if id(r) in queued)


class LevelCounts:
    """Queued requests and rows per priority level, checked against each level's policy."""

    __slots__ = ("_policies", "_rows", "_requests", "_delayed_rows")

    def __init__(self, policies: Mapping[int, LevelPolicy]) -> None:
        self._policies = policies
        self._rows: dict[int, int] = {}
        self._requests: dict[int, int] = {}
        self._delayed_rows: dict[int, int] = {}  # the part of `_rows` that is delayed

    def count(self, request: Request, sign: int) -> None:
        """`request` joined (+1) or left (-1) the queue."""
        _bump(self._rows, request.priority, sign * request.batch_size)
        _bump(self._requests, request.priority, sign)
        if request.delayed:
            _bump(self._delayed_rows, request.priority, sign * request.batch_size)

    def waiting(self, priority: int) -> int:
        """Queued requests of `priority`."""
        return self._requests.get(priority, 0)

    def rows(self, upto: int | None = None) -> int:
        """Queued rows of every level, or of the levels served no later than `upto`."""
        if upto is None:
            return sum(self._rows.values())
        return sum(n for p, n in self._rows.items() if p <= upto)

    def ahead(self, priority: int) -> int:
        """Queued rows served before a new request of `priority`: every more urgent level's
        and its own level's, less its own level's delayed ones (it goes before those)."""
        return self.rows(upto=priority) - self._delayed_rows.get(priority, 0)

    def timeout(self, priority: int, model_default: float | None) -> float | None:
        """The default deadline (seconds) of a request of `priority` that brings none."""
        policy = self._policies.get(priority)
        if policy is not None and policy.default_timeout_s is not None:
            return policy.default_timeout_s
        return model_default

    def delays(self, priority: int, model_action: str) -> bool:
        """Whether a passed deadline delays (rather than rejects) a request of `priority`."""
        policy = self._policies.get(priority)
        if policy is not None and policy.timeout_action is not None:
            return policy.timeout_action == "delay"
        return model_action == "delay"

    def overrides(self, priority: int, model_default: bool) -> bool:
        """Whether a request of `priority` may replace the default deadline with its own."""
        policy = self._policies.get(priority)
        if policy is not None and policy.allow_timeout_override is not None:
            return policy.allow_timeout_override
        return model_default

    def timeout_source(self, priority: int) -> str:
        """Where the default deadline of a request of `priority` comes from, for messages."""
        policy = self._policies.get(priority)
        if policy is not None and policy.default_timeout_s is not None:
            return f"the default timeout of {policy.name or f'priority level {priority}'}"
        return "the model's queue.default_timeout_ms"

    def full(self, priority: int) -> str | None:
        """Why `priority`'s own queue has no room, or None when it has (or has no bound)."""
        policy = self._policies.get(priority)
        if policy is None or policy.max_queue_size is None:
            return None
        waiting = self.waiting(priority)
        if waiting < policy.max_queue_size:
            return None
        name = policy.name or f"priority level {priority}"
        # Both numbers: requests sent back to the queue are kept past the bound.
        return (f"queue full for {name} ({waiting} request{'s' if waiting > 1 else ''} of "
                f"that priority waiting; its max_size is {policy.max_queue_size}); requests "
                "of other priorities are still taken")


def _bump(counts: dict[int, int], level: int, by: int) -> None:
    value = counts.get(level, 0) + by
    if value:
        counts[level] = value
    else:  # empty levels are dropped: sums over the dict stay as short as the live levels
        counts.pop(level, None)


def own_timeout_fails(config: SchedulerConfig, priority: int) -> bool:
    """Whether a request of `priority` (a level) may fail for its own `timeout` before it is
    queued (a sequence's request waiting for the earlier ones): not where its level delays
    late requests, nor where its `timeout` is ignored (allow_timeout_override false)."""
    levels = LevelCounts(config.priorities)
    return (levels.overrides(priority, config.allow_timeout_override)
            and not levels.delays(priority, config.timeout_action))

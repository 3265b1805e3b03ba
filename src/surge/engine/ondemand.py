"""Load on demand and eviction: models listed at start, loaded by their first request, and the
least recently used unpinned ones unloaded when another would not fit the memory budget.

The engine calls four hooks: `at_start` (load now, or leave cold), `wait_loaded` (a request
for a cold model, bounded as `load_wait` says), `make_room` / `after_load` (around every load)
and `forget` (an explicit unload). Everything that happens to a model goes through the
engine's own `load` and `evict`, so a dedicated worker pool and a view onto a shared worker
group are handled alike.

How much memory a loaded model uses is measured, not guessed: a pool that reports it
(`ReportsMemory.resident_bytes`, which a shared group answers with its RSS growth from loading
that model) is asked; a pool of dedicated processes (`HasPids`) is measured as the resident
memory of its processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from surge.engine.instances import Clock
from surge.engine.load_wait import LoadWait, load_wait, queue_policy
from surge.engine.metrics import SurgeMetrics
from surge.engine.residency import MemoryBudget, NoRoomError, Residency, format_bytes
from surge.errors import ModelNotReadyError, SurgeError
from surge.repository import ModelConfig, Repository
from surge.repository.queueing import QueueConfig
from surge.scheduler.types import check_options

log = logging.getLogger(__name__)

LoadMode = Literal["eager", "on-demand"]
# A failed load is tried again by a request only after this backoff, doubled per failure in a
# row: a broken model must not cost a worker spawn per request.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
# Event-loop turns the requests that waited for a finished load get to queue on it before an
# eviction may take it (they resume within a few turns; the cap only guards against a bug).
HANDOVER_TURNS = 100
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ResidencyOptions:
    """When models load and how much memory the loaded ones may hold (`surge serve --load,
    --memory-budget, --group-memory-budget`)."""

    load: LoadMode = "eager"  # for models whose config.yaml sets no `load:`
    budget: MemoryBudget = field(default_factory=MemoryBudget)


@runtime_checkable
class ReportsMemory(Protocol):
    """A pool that knows the memory its model added (a shared group: its RSS growth)."""

    def resident_bytes(self) -> int: ...


@runtime_checkable
class HasPids(Protocol):
    """A pool of dedicated worker processes: all their memory is the model's."""

    def pids(self) -> list[int]: ...


def process_rss(pid: int) -> int:
    """Resident bytes of process `pid` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def measure(pools: Iterable[object]) -> int:
    """Resident bytes of a model, from the pools of its served versions."""
    total = 0
    for pool in pools:
        if isinstance(pool, ReportsMemory):
            total += pool.resident_bytes()
        elif isinstance(pool, HasPids):
            total += sum(process_rss(pid) for pid in pool.pids())
    return total


def pools_of(served: Iterable[object]) -> list[object]:
    """The instance pools behind served versions: a model's own, each rung's of an accuracy
    ladder; none for a pipeline (its steps are models of their own, measured as such)."""
    pools: list[object] = []
    for item in served:
        pool = getattr(item, "pool", None)
        if pool is not None:
            pools.append(pool)
        pools += pools_of(getattr(item, "rungs", {}).values())
    return pools


def group_of(config: ModelConfig) -> str | None:
    """The worker group a model runs in; None for dedicated workers."""
    return config.worker.group if config.worker is not None else None


class ResidencyHost(Protocol):
    """What load on demand needs from the engine."""

    @property
    def metrics(self) -> SurgeMetrics: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def repository(self) -> Repository: ...

    async def ensure_served(self, name: str) -> None:
        """Load `name` unless it is served (its load calls `make_room` and `after_load`)."""

    async def evict(self, name: str) -> bool:
        """Unload `name` to make room; False when it is busy (loading or unloading)."""

    def busy(self) -> set[str]:
        """Models never to evict now: being loaded or unloaded, or needed by a loaded one."""


class _UnloadedMeanwhileError(ModelNotReadyError):
    """A request's load found its model unloaded explicitly while it waited its turn."""


@dataclass(frozen=True)
class _Failure:
    count: int  # failed loads in a row
    retry_at: float  # host clock
    reason: str


class OnDemand:
    """Cold models, one load at a time per model, and the memory budget around every load."""

    def __init__(self, host: ResidencyHost, options: ResidencyOptions) -> None:
        self.options = options
        self.residency = Residency(options.budget)
        self.cold: set[str] = set()  # listed, not loaded: the next request loads them
        self._host = host
        self._loads: dict[str, asyncio.Task[Exception | None]] = {}
        # The queue policy of each model loading for a request, read once per load.
        self._policies: dict[str, asyncio.Future[QueueConfig | None]] = {}
        self._failures: dict[str, _Failure] = {}
        self._load_s: dict[str, float] = {}  # the last cold start of each model
        self._room = asyncio.Lock()  # one eviction decision at a time
        # Under a budget, top-level loads (requests' and explicit ones) go one at a time: loads
        # started together would each fit the budget alone and together hold several times it.
        self._gate = asyncio.Lock()
        self._waiting: Counter[str] = Counter()  # requests awaiting each model's load
        self._unloads: Counter[str] = Counter()  # explicit unloads of each model so far

    @property
    def tracking(self) -> bool:
        """Whether requests must record their model's last use (a budget may evict)."""
        return self.options.budget.limited

    def loads_eagerly(self, config: ModelConfig) -> bool:
        return (config.load or self.options.load) == "eager"

    def touch(self, name: str) -> None:
        self.residency.touch(name, self._host.clock())

    # -- a request for a cold model ------------------------------------------------------------
    async def wait_loaded(self, name: str, priority: int, timeout_us: int | None) -> int | None:
        """Start (or join) the load of `name` and wait for it within the deadline the request
        would be queued under (`load_wait`); returns the timeout left to the request.
        ModelNotReadyError with the reason when the deadline cannot allow the wait or the load
        fails; InputError for a priority or timeout the queue would refuse (no load started)."""
        check_options(priority, timeout_us)  # bad options start no load
        now = self._host.clock()
        failure = self._failures.get(name)
        if failure is not None and now < failure.retry_at and name not in self._loads:
            raise ModelNotReadyError(
                f"model {name!r} failed to load ({failure.reason}); it is tried again on a "
                f"request after {failure.retry_at - now:.1f} s", failure.retry_at - now)
        task = self._loads.get(name) or self._start_load(name)
        expected = self._load_s.get(name)  # an earlier load's
        # Counted from here: an eviction after the load waits for this request to queue.
        self._waiting[name] += 1
        try:
            bound = await self._bound(name, priority, timeout_us)
            if (bound.seconds is not None and expected is not None and expected > bound.seconds
                    and not task.done()):
                raise ModelNotReadyError(
                    f"model {name!r} is loading: its cold start takes about {expected:.2f} s, "
                    f"more than {bound.source} allows{bound.note}", expected)
            error = await self._join(name, task, bound)
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name]
        if error is not None:
            failure = self._failures.get(name)
            raise ModelNotReadyError(f"model {name!r} failed to load: {error}",
                                     failure.retry_at - self._host.clock() if failure else None)
        return bound.left_us(timeout_us, self._host.clock() - now)

    async def _bound(self, name: str, priority: int, timeout_us: int | None) -> LoadWait:
        """The bound on this request's wait for the load, less the time its reading of the
        queue policy took. That reading waits within the request's own `timeout` only: a
        config.yaml that does not come (a stalled disk) is one that cannot be read."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        policy = self._policies[name]
        if not policy.done():  # asyncio.wait, not wait_for: the load goes on reading it
            await asyncio.wait({policy}, timeout=timeout_us / 1e6 if timeout_us else None)
        queue = policy.result() if policy.done() else None
        return load_wait(queue, priority, timeout_us).spent(loop.time() - started)

    async def _join(self, name: str, task: asyncio.Task[Exception | None],
                    bound: LoadWait) -> Exception | None:
        try:
            # shield: a request that gives up (deadline, client gone) leaves the load running.
            return await asyncio.wait_for(asyncio.shield(task), bound.seconds)
        except TimeoutError:
            raise ModelNotReadyError(
                f"model {name!r} is loading: not loaded within {bound.source}{bound.note}",
                self._load_s.get(name, 1.0)) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise ModelNotReadyError(f"model {name!r} was stopped while loading") from None
            raise

    def _start_load(self, name: str) -> asyncio.Task[Exception | None]:
        # Read from config.yaml once per load (untrusted data: parsed off the event loop), for
        # every request the load keeps waiting; the next cold start reads it again.
        policy = asyncio.ensure_future(asyncio.to_thread(self._queue_of, name))
        self._policies[name] = policy
        task = asyncio.create_task(self._cold_start(name, policy),
                                   name=f"surge-cold-start-{name}")
        self._loads[name] = task
        return task

    def _queue_of(self, name: str) -> QueueConfig | None:
        """`name`'s queue policy; None when its config cannot be read (its load says why)."""
        try:
            return queue_policy(self._host.repository.config(name))
        except (SurgeError, OSError, ValueError):
            return None

    async def _cold_start(self, name: str, policy: asyncio.Future[QueueConfig | None]
                          ) -> Exception | None:
        """The load a request triggered, off the requests' path: every request for `name`
        awaits this one task, while requests for other models are served meanwhile."""
        clock = self._host.clock
        started, unloads = clock(), self._unloads[name]
        try:
            # The policy first: a request still reading it when its model is loaded would
            # not be waiting in the load yet, and another load could evict the model first.
            await asyncio.wait({policy})
            await self._load_gated(name, unloads)
        except Exception as exc:  # answered to every waiter, with the reason
            if not isinstance(exc, _UnloadedMeanwhileError):  # no failure of the model's own
                self._failed(name, exc, clock())
            return exc
        finally:
            self._loads.pop(name, None)
            self._policies.pop(name, None)
        seconds = clock() - started
        self._load_s[name] = seconds
        self._failures.pop(name, None)
        self._host.metrics.cold_start.labels(name).observe(seconds)
        return None

    @asynccontextmanager
    async def gated(self) -> AsyncIterator[None]:
        """Behind the other top-level loads when a budget may evict, so that `make_room` sees
        each finished load before the next one decides; no wait without a budget. Taken before
        a model's own lock and never by nested loads (a pipeline's steps: `ensure_served`),
        which run under their parent's turn."""
        if not self.tracking:
            yield
            return
        async with self._gate:
            yield

    async def _load_gated(self, name: str, unloads: int) -> None:
        """`ensure_served`, behind the other loads when a budget may evict; none when `name`
        was unloaded explicitly since its `unloads`-th unload."""
        async with self.gated():
            if self._unloads[name] != unloads:  # an explicit unload meanwhile: it stays so
                raise _UnloadedMeanwhileError(f"model {name!r} was unloaded while its load waited")
            await self._host.ensure_served(name)

    async def _handed_over(self) -> None:
        """Wait until the requests that waited for a finished load have queued on it: a model
        evicted before they resume is gone when they look for it (404 for a loadable model)."""
        for _ in range(HANDOVER_TURNS):
            if all(name in self._loads for name in self._waiting):
                return
            await asyncio.sleep(0)

    def _failed(self, name: str, error: Exception, now: float) -> None:
        previous = self._failures.get(name)
        count = previous.count + 1 if previous else 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (count - 1))
        self._failures[name] = _Failure(count, now + delay, str(error))
        log.warning("model %s: load on demand failed (%s); next try after %.0f s", name, error,
                    delay)

    # -- around every load ---------------------------------------------------------------------
    async def make_room(self, name: str, config: ModelConfig) -> None:
        """Evict the least recently used unpinned models until `name` is expected to fit;
        NoRoomError (the load fails with it) when pinned or busy models hold the budget and
        `name` was measured before (a first load is tried: its size is only a guess), or when
        `name` is a pipeline whose step models were measured too big together. A pipeline
        evicts nothing: priced at other models' sizes, it evicted one of its own steps."""
        if not self.tracking:
            return
        if config.kind == "pipeline":  # no memory of its own: its steps make room as they load
            self.residency.steps_fit(name, [s.model for s in config.steps if s.model])
            return
        async with self._room:
            await self._handed_over()
            group = group_of(config)
            needed = self.residency.estimate(name, group)
            try:
                victims = self.residency.victims(name, needed, group, self._host.busy())
            except NoRoomError:
                if self.residency.measured(name):
                    raise
                # Only a guess from other models: load and measure it, then evict if need be.
                log.info("model %s: loaded without room by its estimate (%s), to measure it",
                         name, format_bytes(needed))
                return
            for victim in victims:
                await self._evict(victim)

    def steps_fit(self, name: str, steps: Collection[str]) -> None:
        """NoRoomError (the load fails with it) when pipeline `name`'s step models were measured
        to need more than a whole budget together (`Residency.steps_fit`)."""
        if self.tracking:
            self.residency.steps_fit(name, steps)

    async def after_load(self, name: str, served: Iterable[object], config: ModelConfig) -> None:
        """Record what the `served` versions of `name` were measured to use; evict others if
        they did not fit after all."""
        self.cold.discard(name)
        self._failures.pop(name, None)  # loaded (explicitly, say): an old failure is no reason
        size = measure(pools_of(served))
        self.residency.loaded(name, size, group_of(config), config.pinned, self._host.clock())
        self._host.metrics.model_memory.labels(name).set(size)
        if not self.tracking:
            return
        async with self._room:
            await self._handed_over()
            try:
                victims = self.residency.over_budget(name, self._host.busy())
            except NoRoomError as exc:
                log.warning("memory budget exceeded: %s", exc)
                return
            for victim in victims:
                await self._evict(victim)

    async def _evict(self, name: str) -> None:
        size = self.residency.size_of(name) or 0
        if not await self._host.evict(name):
            return
        log.info("model %s evicted (least recently used, %s)", name, format_bytes(size))

    def evicted(self, name: str) -> None:
        """The engine unloaded `name` to make room: its next request loads it again."""
        self._released(name)
        self.cold.add(name)
        self._host.metrics.model_evictions.labels(name).inc()

    def forget(self, name: str) -> None:
        """An explicit unload: `name` stays unloaded until loaded explicitly."""
        self._released(name)
        self.cold.discard(name)
        self._unloads[name] += 1

    def _released(self, name: str) -> None:
        """`name` holds no memory now. Its gauge reads 0 rather than losing its series: with
        several front ends the series lives in the multiprocess files, which a removed child
        leaves at its last value, and 0 is what a `placement: cluster` model reads too."""
        self.residency.unloaded(name)
        self._host.metrics.model_memory.labels(name).set(0)

    def loading(self, name: str) -> bool:
        """Whether a request's load of `name` is in progress."""
        return name in self._loads

    def files_changed(self, name: str) -> None:
        """`name`'s files changed: its next request tries a load at once, past any backoff."""
        self._failures.pop(name, None)

    async def stop(self) -> None:
        """Cancel the loads in progress (each stops what it started)."""
        tasks = list(self._loads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["HasPids", "LoadMode", "OnDemand", "ReportsMemory", "ResidencyHost",
           "ResidencyOptions", "group_of", "measure", "pools_of", "process_rss"]

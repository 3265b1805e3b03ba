"""Instances on threads of the serving process (`placement: in-process`): no hand-off.

    dispatch(batch) -> the instance's own thread: join the requests' rows, runner.run
                    -> back on the event loop: PoolEvents.on_done (outputs, timings, instance)

A worker process costs every batch two hops (shared memory, a pipe message, a process wake-up
each way: 0.7-1 ms a batch on a loaded 2-core machine, measured in docs/slo-control.md), which
for a model that computes a batch in 0.2 ms is most of its latency. Here each instance is a
runner loaded in this process and a thread of its own that computes its batches one after
another; ONNX Runtime (and numpy) release the GIL while they compute, so the instances and the
event loop run in parallel. What this gives up: a crash in the engine takes the server down with
it, and the engines share the process's memory and thread settings. A thread cannot be killed:
a batch past its hang limit (`HangRule`) is stopped only where the engine can interrupt a run
(ONNX Runtime: `Interruptible`), which fails the batch as hung and frees the thread; on other
engines it keeps its instance busy. For small models served for latency; see
docs/serving-engine.md (`placement`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from surge.errors import ModelLoadError, ServingError, WorkerCrashedError
from surge.runtimes.base import Interruptible, Runner, Signature, SpinWait, interruptible, run_rows
from surge.scheduler import Batch
from surge.workers.events import PoolEvents
from surge.workers.hang import HangRule
from surge.workers.messages import BatchDone, Warmup
from surge.workers.placement import Placement
from surge.workers.pool import PIPELINE_DEPTH, BatchResult, dispatch_order
from surge.workers.shared_worker import rss_bytes
from surge.workers.worker import WorkerSpec, load

log = logging.getLogger(__name__)
Computed = tuple[dict[str, np.ndarray], BatchDone]


@dataclass
class ThreadInstance:
    """One instance: its runner, the one thread that computes its batches, what it holds."""

    index: int
    runner: Runner
    thread: ThreadPoolExecutor
    batches: deque[Batch] = field(default_factory=deque)  # in dispatch order; [0] computes
    last_done: float = 0.0  # loop time of its last result
    # Hang stops, where the engine can interrupt a run (None: it cannot). The thread records
    # the batch it computes under `lock`, so that a stop meant for one batch never reaches the
    # next (the engine's flag stays set until the next run clears it: `flagged`).
    engine: Interruptible | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    computing: Batch | None = None  # the thread's, under `lock`
    flagged: bool = False  # the thread's, under `lock`
    watch: asyncio.TimerHandle | None = None  # the hang timer; the loop's
    since: float = 0.0  # loop time batches[0] started
    stopped: Batch | None = None  # the batch stopped as hung, its result not back yet

    @property
    def free(self) -> int:
        return PIPELINE_DEPTH - len(self.batches)


def batch_inputs(batch: Batch) -> dict[str, np.ndarray]:
    """The batch's rows per input: one request's arrays as they are, several joined."""
    requests = batch.requests
    if len(requests) == 1:
        return dict(requests[0].inputs)
    return {name: np.concatenate([r.inputs[name] for r in requests])
            for name in requests[0].inputs}


def compute(instance: ThreadInstance, batch: Batch) -> Computed:
    """Run one batch on the instance's thread, where a hang stop can find it."""
    engine = instance.engine
    if engine is None:
        return timed_run(instance.runner, batch)
    with instance.lock:
        instance.computing = batch
        if instance.flagged:  # a stop sent to the batch before, as its run ended
            engine.resume()
            instance.flagged = False
    try:
        return timed_run(instance.runner, batch)
    finally:
        with instance.lock:
            instance.computing = None


def timed_run(runner: Runner, batch: Batch) -> Computed:
    """Run one batch on the instance's thread, timed as a worker times its batches."""
    started, cpu = time.perf_counter_ns(), time.thread_time_ns()
    inputs = batch_inputs(batch)
    joined = time.perf_counter_ns()
    ran = run_rows(runner, inputs)
    cpu_ns = time.thread_time_ns() - cpu + ran.other_threads_cpu_ns
    return ran.outputs, BatchDone(batch.id, input_ns=joined - started,
                                  infer_ns=time.perf_counter_ns() - joined, cpu_ns=cpu_ns,
                                  rejected=ran.rejected, preprocess_cpu_ns=ran.preprocess_cpu_ns)


class InProcessPool:
    """The instances of one model version as threads of this process (`InstancePool`)."""

    def __init__(self, root: str, ref: str, version: int | None, placements: list[Placement],
                 events: PoolEvents, *, spin_wait: SpinWait = False,
                 hang: HangRule | None = None, warmup: Warmup = None) -> None:
        self.root, self.ref, self.version = root, ref, version
        self._warmup = warmup  # the front end's model_warmup
        self.placements = placements
        self.signature: Signature | None = None
        self._events = events
        self._spin_wait = spin_wait
        self._hang = hang
        self.hangs = 0  # batches stopped as hung
        self._instances: list[ThreadInstance] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._added = 0  # resident bytes the loads added to this process (memory budgets)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm up every instance (each on its own thread), then take batches."""
        self._loop = asyncio.get_running_loop()
        before = rss_bytes()
        for index, placement in enumerate(self.placements):
            thread = ThreadPoolExecutor(1, f"surge-{self.ref}-{index}")
            spec = WorkerSpec(self.root, self.ref, self.version, placement.threads,
                              placement.device, index, self._spin_wait, self._warmup)
            try:
                runner = await self._loop.run_in_executor(thread, load, spec)
            except Exception as exc:
                thread.shutdown(wait=False)
                await self.stop(0.0)
                raise ModelLoadError(f"model {self.ref!r}: {type(exc).__name__}: {exc}") from None
            self._instances.append(ThreadInstance(index, runner, thread,
                                                  engine=interruptible(runner)))
            self.signature = runner.signature
        self._added = max(0, rss_bytes() - before)

    def resident_bytes(self) -> int:
        """Memory the instances' loads added to this process: what a memory budget counts for
        the model (it has no process of its own to measure)."""
        return self._added if self._instances else 0

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Let the batches computing finish (within `timeout_s`), fail those still held, and
        end the threads. The caller drains first."""
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while any(i.batches for i in self._instances) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for instance in self._instances:
            if instance.watch is not None:
                instance.watch.cancel()
            if instance.batches:  # past the grace: free the thread where the engine can
                self._interrupt(instance, instance.batches[0])
            while instance.batches:
                self._events.on_done(instance.batches.popleft(), None,
                                     WorkerCrashedError("model is being stopped"), None)
            # The batches queued behind were failed above: do not compute them.
            instance.thread.shutdown(wait=False, cancel_futures=True)
        self._instances.clear()

    # -- what the driver reads ---------------------------------------------------------------
    @property
    def instances(self) -> int:
        return len(self.placements)

    @property
    def ready(self) -> bool:
        return bool(self._instances) and not self._stopping

    @property
    def idle_count(self) -> int:
        return sum(i.free for i in self._instances) if not self._stopping else 0

    @property
    def idle_workers(self) -> int:
        return sum(1 for i in self._instances if not i.batches)

    def devices(self) -> tuple[str, ...]:
        return tuple(i.runner.device for i in self._instances)

    # -- batches -----------------------------------------------------------------------------
    def dispatch(self, batch: Batch) -> None:
        """Hand `batch` to the instance with the most room (an idle one first; among busy
        ones, the one whose batch started first)."""
        instance = max(self._instances, key=dispatch_order)
        assert instance.free > 0
        instance.batches.append(batch)
        if len(instance.batches) == 1:  # it starts computing this one now
            self._watch(instance)
        future = instance.thread.submit(compute, instance, batch)
        future.add_done_callback(lambda done: self._back_on_loop(instance, batch, done))

    def _back_on_loop(self, instance: ThreadInstance, batch: Batch,
                      future: Future[Computed]) -> None:
        """From the instance's thread: hand the result to the event loop, unless it has closed
        (a batch that outlived stop()'s grace: its requests were failed then)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finished, instance, batch, future)

    def _finished(self, instance: ThreadInstance, batch: Batch, future: Future[Computed]) -> None:
        if not instance.batches or instance.batches[0] is not batch:
            return  # failed by stop() already
        instance.batches.popleft()
        self._watch(instance)
        hung, instance.stopped = instance.stopped is batch, None
        error = future.exception()
        if error is not None and hung:  # answered as a worker's hung batch is: retry or 503
            self.hangs += 1
            self._events.on_hung(batch)
            return
        if error is not None:  # a bad batch fails its requests, not the instance
            self._events.on_done(batch, None, ServingError(
                f"model {self.ref!r} failed: {type(error).__name__}: {error}"), None)
            return
        outputs, done = future.result()
        assert self._loop is not None
        now = time.monotonic()
        own_s = (done.input_ns + done.infer_ns) / 1e9
        service_s = max(own_s, now - max(batch.dispatched, instance.last_done))
        instance.last_done = now
        self._events.on_done(batch, outputs, None, BatchResult(done, service_s, instance.index))

    # -- hangs -------------------------------------------------------------------------------
    def _watch(self, instance: ThreadInstance) -> None:
        """Note when the instance's first batch started, for the hang timer, where its engine
        can be interrupted (elsewhere a hung batch cannot be stopped: no timer). One timer an
        instance, armed when none is, not one a batch: arming and cancelling one costs 0.7 us
        a batch on uvloop, noting the time 0.1 us."""
        if instance.engine is None or self._hang is None or not instance.batches:
            return
        assert self._loop is not None
        instance.since = self._loop.time()
        if instance.watch is None:
            limit = self._limit(instance.batches[0])
            if limit is not None:
                instance.watch = self._loop.call_later(limit, self._overdue, instance)

    def _limit(self, batch: Batch) -> float | None:
        assert self._hang is not None
        return self._hang.limit(self._events.batch_estimate(batch.size))

    def _overdue(self, instance: ThreadInstance) -> None:
        """The hang timer fired: stop the first batch's run if it is past its limit (its error
        comes back as the batch's result), else wait for what it has left."""
        assert self._loop is not None
        instance.watch = None
        if not instance.batches:
            return  # idle: the next batch arms it
        batch = instance.batches[0]
        limit = self._limit(batch)
        if limit is None:
            return
        left = instance.since + limit - self._loop.time()
        if left > 0 or not self._interrupt(instance, batch):  # not started, or its result is
            instance.watch = self._loop.call_later(max(left, 0.01), self._overdue, instance)
            return  # on the way (that cancels nothing: the next check finds the next batch)
        instance.stopped = batch
        log.error("in-process instance %s[%d] computed a batch of %d for %.2f s: taken as hung, "
                  "its run stopped", self.ref, instance.index, batch.size, limit)

    @staticmethod
    def _interrupt(instance: ThreadInstance, batch: Batch) -> bool:
        """Interrupt the engine's run if its thread computes `batch` now; whether it did."""
        if instance.engine is None:
            return False
        with instance.lock:
            if instance.computing is not batch:
                return False
            instance.engine.interrupt()
            instance.flagged = True
        return True

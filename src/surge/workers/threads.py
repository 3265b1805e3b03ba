"""Instances on threads of the serving process (`placement: in-process`): no hand-off.

    dispatch(batch) -> the instance's own thread: join the requests' rows, runner.run
                    -> back on the event loop: PoolEvents.on_done (outputs, timings, instance)

A worker process costs every batch two hops (shared memory, a pipe message, a process wake-up
each way: 0.7-1 ms a batch on a loaded 2-core machine, measured in docs/slo-control.md), which
for a model that computes a batch in 0.2 ms is most of its latency. Here each instance is a
runner loaded in this process and a thread of its own that computes its batches one after
another; ONNX Runtime (and numpy) release the GIL while they compute, so the instances and the
event loop run in parallel. What this gives up: a crash in the engine takes the server down with
it, a hung batch cannot be killed (its instance stays busy; no restart), and the engines share
the process's memory and thread settings. For small models served for latency; see
docs/serving-engine.md (`placement`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from surge.errors import ModelLoadError, ServingError, WorkerCrashedError
from surge.runtimes.base import Runner, Signature, SpinWait, run_rows
from surge.scheduler import Batch
from surge.workers.events import PoolEvents
from surge.workers.messages import BatchDone
from surge.workers.placement import Placement
from surge.workers.pool import PIPELINE_DEPTH, BatchResult, dispatch_order
from surge.workers.worker import WorkerSpec, load


@dataclass
class ThreadInstance:
    """One instance: its runner, the one thread that computes its batches, what it holds."""

    index: int
    runner: Runner
    thread: ThreadPoolExecutor
    batches: deque[Batch] = field(default_factory=deque)  # in dispatch order; [0] computes
    last_done: float = 0.0  # loop time of its last result

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


def compute(runner: Runner, batch: Batch) -> tuple[dict[str, np.ndarray], BatchDone]:
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
                 events: PoolEvents, *, spin_wait: SpinWait = False) -> None:
        self.root, self.ref, self.version = root, ref, version
        self.placements = placements
        self.signature: Signature | None = None
        self._events = events
        self._spin_wait = spin_wait
        self._instances: list[ThreadInstance] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm up every instance (each on its own thread), then take batches."""
        self._loop = asyncio.get_running_loop()
        for index, placement in enumerate(self.placements):
            thread = ThreadPoolExecutor(1, f"surge-{self.ref}-{index}")
            spec = WorkerSpec(self.root, self.ref, self.version, placement.threads,
                              placement.device, index, self._spin_wait)
            try:
                runner = await self._loop.run_in_executor(thread, load, spec)
            except Exception as exc:
                thread.shutdown(wait=False)
                await self.stop(0.0)
                raise ModelLoadError(f"model {self.ref!r}: {type(exc).__name__}: {exc}") from None
            self._instances.append(ThreadInstance(index, runner, thread))
            self.signature = runner.signature

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Let the batches computing finish (within `timeout_s`), fail those still held, and
        end the threads. The caller drains first."""
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while any(i.batches for i in self._instances) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for instance in self._instances:
            while instance.batches:
                self._events.on_done(instance.batches.popleft(), None,
                                     WorkerCrashedError("model is being stopped"), None)
            instance.thread.shutdown(wait=False)
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
        future = instance.thread.submit(compute, instance.runner, batch)
        future.add_done_callback(lambda done: self._back_on_loop(instance, batch, done))

    def _back_on_loop(self, instance: ThreadInstance, batch: Batch,
                      future: Future[tuple[dict[str, np.ndarray], BatchDone]]) -> None:
        """From the instance's thread: hand the result to the event loop, unless it has closed
        (a batch that outlived stop()'s grace: its requests were failed then)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finished, instance, batch, future)

    def _finished(self, instance: ThreadInstance, batch: Batch,
                  future: Future[tuple[dict[str, np.ndarray], BatchDone]]) -> None:
        if not instance.batches or instance.batches[0] is not batch:
            return  # failed by stop() already
        instance.batches.popleft()
        error = future.exception()
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

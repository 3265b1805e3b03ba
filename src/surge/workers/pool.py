"""A pool of worker processes serving one model version, driven from the front end's event loop.

Results are read without blocking the loop: each worker's pipe is registered with
`loop.add_reader`. A worker that dies (even SIGKILL) closes its pipe: the reader sees EOF at
once, the batch it was computing is failed with WorkerCrashedError, a batch still waiting in
its second slot (never started) goes back to the queue, and it is restarted with exponential
backoff; a restart that cannot even start a process (no file descriptors left, no memory) is
tried again on the same backoff, never given up. A worker whose batch runs far past its
estimate (`HangRule`) is taken as hung: killed, its batch handed back, restarted the same way.

Each worker holds up to PIPELINE_DEPTH batches: it computes one while the next already waits in
shared memory, so it does not idle while the front end hands out results and forms the next
batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from surge.errors import ModelLoadError, ServingError, WorkerCrashedError
from surge.runtimes.base import Signature, SpinWait
from surge.scheduler.types import Batch
from surge.workers.dispatch import Instance as Instance  # re-exported
from surge.workers.dispatch import dispatch_order as dispatch_order  # re-exported
from surge.workers.exits import exited_loading
from surge.workers.hang import HangRule
from surge.workers.messages import BatchDone, LoadFailed, Ready, Stop, Warmup
from surge.workers.placement import Placement, first_slot_bytes
from surge.workers.placement import cuda_device_count as cuda_device_count  # re-exported
from surge.workers.placement import plan_instances as plan_instances  # re-exported
from surge.workers.transport import SlotSpaceError, Transport, make_transport, whole_messages
from surge.workers.worker import WorkerSpec, worker_main
from surge.workers.worker_state import PIPELINE_DEPTH as PIPELINE_DEPTH  # re-exported
from surge.workers.worker_state import State as State  # re-exported
from surge.workers.worker_state import Worker as Worker  # re-exported

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a worker alive this long resets the backoff


@dataclass(frozen=True)
class BatchResult:
    """How a batch went: the worker's own timings and the service time the front end saw."""

    done: BatchDone
    service_s: float
    instance: int = 0  # which instance computed it: the scheduler learns each one's time


# Called with (batch, outputs or None, error or None, result or None).
DoneCallback = Callable[[Batch, "dict[str, np.ndarray] | None", "Exception | None",
                         "BatchResult | None"], None]


class WorkerPool:
    """The instances of one model version: start, dispatch, crash handling, restart, stop."""

    def __init__(
        self,
        root: str,
        ref: str,
        version: int | None,
        placements: list[Placement],
        on_done: DoneCallback,
        *,
        transport: str | None = None,
        on_restart: Callable[[], None] | None = None,
        on_requeue: Callable[[Batch], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        max_batch_size: int = 1,
        spin_wait: SpinWait = False,
        hang: HangRule | None = None,
        estimate: Callable[[int], float | None] | None = None,
        on_hung: Callable[[Batch], None] | None = None,
        on_spawn_failure: Callable[[], None] | None = None,
        warmup: Warmup = None,
        load_timeout_s: float | None = None,
    ) -> None:
        self.root, self.ref, self.version = root, ref, version
        self.warmup = warmup  # the front end's model_warmup (a load's override may set it)
        self._load_timeout_s = load_timeout_s  # a restarted worker's; the first start's is
        # the engine's (exits.started_within)
        self.label = f"model {ref!r}"  # what its errors and logs call the pool's model
        self.spin_wait = spin_wait
        self.placements = placements
        self.signature: Signature | None = None
        self._on_done = on_done
        self._on_restart = on_restart
        self._on_requeue = on_requeue
        self._on_ready = on_ready
        self._transport_kind = transport
        self._max_batch = max(1, max_batch_size)
        self._workers: list[Worker | None] = [None] * len(placements)
        self._failures = [0] * len(placements)
        self._restarts: dict[int, asyncio.TimerHandle] = {}
        self._warm = False  # every instance has been ready once
        self._stopping = False
        self._changed = asyncio.Event()
        self._ctx = mp.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        # Hang detection needs both: the rule, and the seconds a batch of a size should take.
        self._hang = hang if estimate is not None else None
        self._estimate = estimate
        self._on_hung = on_hung  # the hung batch's requests: retry or fail (default: fail)
        self._on_spawn_failure = on_spawn_failure
        self.restarts = 0
        self.spawn_failures = 0  # restarts whose process could not even be started
        self.hangs = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn every instance and wait until all have loaded and run a warm-up batch."""
        self._loop = asyncio.get_running_loop()
        for index in range(len(self.placements)):
            try:
                self._start_worker(index)
            except OSError as exc:
                await self.stop(0.0)
                raise ModelLoadError(f"model {self.ref!r}: cannot start a worker: {exc}") from None
        while not all(w is not None and w.state is State.READY for w in self._workers):
            failed = [w for w in self._workers if w is not None and w.state is State.DEAD]
            if failed:
                await self.stop(0.0)
                why = failed[0].load_error or exited_loading(failed[0].index,
                                                             failed[0].process.exitcode)
                raise ModelLoadError(f"model {self.ref!r}: {why}")
            self._changed.clear()
            await self._changed.wait()
        self._warm = True

    def devices(self) -> tuple[str, ...]:
        """Where each ready instance's engine runs ('cpu', 'cuda:0', ...)."""
        return tuple(w.device for w in self._workers
                     if w is not None and w.state is State.READY and w.device)

    @property
    def instances(self) -> int:
        """How many worker processes this pool runs (when all are alive)."""
        return len(self.placements)

    @property
    def live(self) -> int:
        """Instances loaded and taking batches now (the others are restarting)."""
        return sum(1 for w in self._workers if w is not None and w.state is State.READY)

    @property
    def ready(self) -> bool:
        """All instances warmed up once, and at least one alive now: it serves from those."""
        return self._warm and not self._stopping and self.live > 0

    @property
    def idle_count(self) -> int:
        """Batches the pool can take now (free pipeline places over live workers)."""
        return sum(w.free for w in self._workers if w is not None)

    @property
    def idle_workers(self) -> int:
        """Live workers with nothing to compute."""
        return sum(1 for w in self._workers
                   if w is not None and w.state is State.READY and not w.batches)

    @property
    def busy_count(self) -> int:
        """Workers computing a batch."""
        return sum(1 for w in self._workers if w is not None and w.batches)

    @property
    def transports(self) -> list[Transport]:
        return [w.transport for w in self._workers if w is not None and w.transport is not None]

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers
                if w is not None and w.state is State.READY and w.process.pid is not None]

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every worker (after `timeout_s` they are killed; one still loading its model
        at once: a load reads no Stop before it ends) and free the shared memory. The caller
        drains first: batches still in flight here fail with WorkerCrashedError."""
        self._stopping = True
        for handle in self._restarts.values():
            handle.cancel()
        self._restarts.clear()
        workers = [w for w in self._workers if w is not None]
        for worker in workers:
            if worker.state is State.STARTING:
                worker.process.kill()
            elif worker.state is not State.DEAD:
                with contextlib.suppress(OSError):
                    worker.conn.send(Stop())
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            await asyncio.to_thread(worker.process.join, max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5.0)
            self._close(worker, WorkerCrashedError("model is being stopped"))
            if worker.transport is not None:
                worker.transport.close()
                worker.transport = None

    # -- processes ---------------------------------------------------------------------------
    def spec(self, index: int) -> WorkerSpec:
        """What instance `index` is told to load, and how to run it."""
        placement = self.placements[index]
        return WorkerSpec(self.root, self.ref, self.version, placement.threads, placement.device,
                          index, self.spin_wait, self.warmup)

    def _spawn(self, index: int) -> None:
        """Restart instance `index` (a timer callback); one that cannot start is tried again."""
        self._restarts.pop(index, None)
        if self._stopping:
            return
        try:
            self._start_worker(index)
        except Exception as exc:  # EMFILE, EAGAIN, ENOMEM: the instance must come back later
            self.spawn_failures += 1
            if self._on_spawn_failure is not None:
                self._on_spawn_failure()
            delay = self._schedule_spawn(index)
            log.error("worker %s[%d] could not be started (%s: %s); retrying in %.1fs",
                      self.ref, index, type(exc).__name__, exc, delay)

    def _schedule_spawn(self, index: int) -> float:
        """Start instance `index` after its backoff (which doubles each time); the delay."""
        delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** self._failures[index])
        self._failures[index] += 1
        assert self._loop is not None
        self._restarts[index] = self._loop.call_later(delay, self._spawn, index)
        return delay

    def _entry(self, index: int) -> tuple[Callable[[Any, Connection], None], object]:
        """The function process `index` runs, and the spec it is handed (picklable)."""
        return worker_main, self.spec(index)

    def _start_worker(self, index: int) -> None:
        placement = self.placements[index]
        parent, child = self._ctx.Pipe(duplex=True)
        entry, spec = self._entry(index)
        try:
            process = self._ctx.Process(target=entry, args=(spec, child),
                                        daemon=True, name=f"surge-worker-{self.ref}-{index}")
            process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()  # only the worker holds its end: its death is EOF here
        old = self._workers[index]
        transport = old.transport if old is not None else None
        if transport is not None:
            transport.reset()
        worker = Worker(index, placement, process, parent, time.monotonic(), transport=transport)
        self._workers[index] = worker
        assert self._loop is not None
        self._loop.add_reader(parent.fileno(), self._readable, worker)
        if self._warm and self._load_timeout_s is not None:  # a restart
            worker.watch = self._loop.call_later(self._load_timeout_s, self._load_overdue, worker)

    def _readable(self, worker: Worker) -> None:
        try:
            with whole_messages(worker.conn):
                while worker.state is not State.DEAD and worker.conn.poll():
                    self._handle(worker, worker.conn.recv())
        except (EOFError, ConnectionResetError):
            # Reset, not EOF, when it died with messages it never read (a batch in its second
            # slot, or any batch sent while it was stopped): a death all the same.
            self._crashed(worker)
        except OSError as exc:  # the pipe or a shared-memory slot failed: the worker is lost
            log.warning("worker %s[%d]: %s", self.ref, worker.index, exc, exc_info=True)
            self._crashed(worker)

    def _handle(self, worker: Worker, message: object) -> None:
        if isinstance(message, BatchDone):
            self._finished(worker, message)
        elif isinstance(message, Ready):
            self._ready(worker, message)
        elif isinstance(message, LoadFailed):
            worker.load_error = message.error

    def _ready(self, worker: Worker, message: Ready) -> None:
        if self.signature is None:
            self.signature = message.signature
        if worker.transport is None and not self._set_up_transport(
                worker, first_slot_bytes(message.signature.inputs, self._max_batch),
                first_slot_bytes(message.signature.outputs, self._max_batch)):
            return
        self._mark_ready(worker, message.pid, message.threads, message.device)

    def _set_up_transport(self, worker: Worker, input_bytes: int, output_bytes: int) -> bool:
        """Give `worker` its tensor channel; without one (no file descriptor or /dev/shm space
        left) it cannot take a batch: it is let go and its load fails with the reason."""
        try:
            worker.transport = make_transport(self._transport_kind, input_bytes, output_bytes,
                                              PIPELINE_DEPTH)
        except OSError as exc:
            worker.load_error = (f"no shared memory for worker {worker.index}'s tensors "
                                 f"({exc.strerror or exc}): free file descriptors or /dev/shm "
                                 f"space, or set SURGE_TRANSPORT=pipe")
            log.error("worker %s[%d] cannot serve: %s", self.ref, worker.index, worker.load_error)
            self._crashed(worker, "could not get shared memory for its tensors")
            return False
        return True

    def _mark_ready(self, worker: Worker, pid: int, threads: int, device: str) -> None:
        """`worker` takes batches from now on."""
        self._watch(worker)  # it has no batch: its load timer stops
        worker.state = State.READY
        worker.device = device
        log.info("worker %s[%d] ready (pid %d, %d threads, %s)", self.ref, worker.index, pid,
                 threads, device)
        self._changed.set()
        if self._on_ready is not None:  # a (re)started worker can take the batches queued meanwhile
            self._on_ready()

    def _crashed(self, worker: Worker, cause: str = "", started: int = 1) -> None:
        """Its pipe closed, or (`cause`) the worker must go: fail its batches, restart it.

        `started`: how many of its batches it had begun (see `_close`).
        """
        was_ready = worker.state is State.READY
        if cause:
            worker.process.kill()  # SIGKILL ends a stopped (SIGSTOP) process too
        worker.process.join(1.0)  # its pipe closed: it is exiting; reap it for the exit code
        what = cause or f"died (exit code {worker.process.exitcode})"
        self._close(worker, WorkerCrashedError(
            f"worker {worker.index} of {self.label} {what} while computing this request"
        ), started)
        self._changed.set()
        if self._stopping or not self._warm:
            return  # start() reports a failed first load; stop() needs no restart
        if was_ready and time.monotonic() - worker.started >= STABLE_AFTER_S:
            self._failures[worker.index] = 0
        self.restarts += 1
        self._restarting(worker)
        delay = self._schedule_spawn(worker.index)
        log.warning("worker %s[%d] %s; restarting in %.1fs", self.ref, worker.index, what, delay)

    def _restarting(self, worker: Worker) -> None:
        """`worker` died and will be restarted: tell the model."""
        if self._on_restart is not None:
            self._on_restart()

    def _close(self, worker: Worker, error: Exception, started: int = 1) -> None:
        """Forget a worker's process and pipe; fail the batch it computed with `error`.

        Batches behind it were never started (results come in order), so they are safe to
        queue again; without a requeue callback they fail too. `started` is 0 when the one it
        computed was taken out already (a hang).
        """
        if worker.watch is not None:
            worker.watch.cancel()
            worker.watch = None
        if worker.state is not State.DEAD:
            worker.state = State.DEAD
            assert self._loop is not None
            self._loop.remove_reader(worker.conn.fileno())
            worker.conn.close()
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(1.0)
        batches = list(worker.batches)
        worker.batches.clear()
        for i, batch in enumerate(batches):
            if i >= started and self._on_requeue is not None:
                self._on_requeue(batch)
            else:
                self._on_done(batch, None, error, None)

    # -- batches -----------------------------------------------------------------------------
    def dispatch(self, batch: Batch) -> None:
        """Send `batch` to the least loaded worker (the caller checked `idle_count`)."""
        worker = max((w for w in self._workers if w is not None), key=dispatch_order)
        self._send_to(worker, batch)

    def _send_to(self, worker: Worker, batch: Batch, model: str = "") -> None:
        """Queue `batch` on `worker` (for `model` of a worker hosting several) and send it."""
        assert worker.transport is not None
        assert worker.free > 0
        worker.batches.append(batch)
        if len(worker.batches) == 1:  # it starts computing this one now
            self._watch(worker)
        parts = {name: [r.inputs[name] for r in batch.requests] for name in batch.requests[0].inputs}
        try:
            worker.transport.send(worker.conn, batch.id, parts, model)
        except SlotSpaceError as error:  # nothing was sent: the worker is as it was
            worker.batches.pop()
            self._watch(worker)
            self._on_done(batch, None, error, None)
        except OSError:
            self._crashed(worker)

    def _finished(self, worker: Worker, done: BatchDone) -> None:
        assert worker.transport is not None
        if not worker.batches or worker.batches[0].id != done.batch_id:
            log.error("worker %s[%d] answered batch %d it was not given", self.ref, worker.index,
                      done.batch_id)
            return
        batch = worker.batches[0]
        if done.error:
            worker.batches.popleft()
            self._watch(worker)
            worker.transport.skip()
            self._on_done(batch, None, ServingError(f"{self._owner(batch)} failed: {done.error}"),
                          None)
            return
        outputs = worker.transport.receive(worker.conn, done)
        # Service time as the front end sees it: from when the worker could start this batch
        # (dispatch, or its previous result) to now. Unlike the worker's own timing it
        # includes the hops and the front end's delays, which admission control must count.
        assert self._loop is not None
        now = time.monotonic()
        # Two results read in one wakeup would make the second look free: never count less
        # than the worker's own time.
        own_s = (done.input_ns + done.infer_ns + done.output_ns) / 1e9
        service_s = max(own_s, now - max(batch.dispatched, worker.last_done))
        worker.last_done = now
        # Outputs view the worker's output slot: consume them before its slot is reused.
        self._on_done(batch, outputs, None, BatchResult(done, service_s, worker.index))
        worker.batches.popleft()
        self._watch(worker)

    def _owner(self, batch: Batch) -> str:
        """The model `batch` belongs to, as errors name it."""
        return self.label

    # -- hangs -------------------------------------------------------------------------------
    def _load_overdue(self, worker: Worker) -> None:
        """A restarted worker still loading after load_timeout_s (a warm-up that never ends):
        it would have left its instance out for good. Killed, and restarted again."""
        worker.watch = None
        if worker.state is State.STARTING:
            self._crashed(worker, f"did not load the model within {self._load_timeout_s:g} s "
                          "(load_timeout_s) and was killed")

    def _watch(self, worker: Worker) -> None:
        """Time the batch `worker` computes now (its first), against the hang rule."""
        if worker.watch is not None:
            worker.watch.cancel()
            worker.watch = None
        if not worker.batches:
            return
        batch = worker.batches[0]
        limit = self._batch_limit(batch)
        if limit is not None:
            assert self._loop is not None
            worker.watch = self._loop.call_later(limit, self._overdue, worker, batch, limit)

    def _batch_limit(self, batch: Batch) -> float | None:
        """Seconds `batch` may compute before its worker counts as hung (None: no limit)."""
        if self._hang is None or self._estimate is None:
            return None
        return self._hang.limit(self._estimate(batch.size))

    def _overdue(self, worker: Worker, batch: Batch, limit: float) -> None:
        """The hang timer fired: kill the worker, hand its batch back, restart it."""
        worker.watch = None
        if worker.state is not State.READY or not worker.batches or worker.batches[0] is not batch:
            return
        worker.batches.popleft()  # answered below, not failed as a crash
        self.hangs += 1
        cause = f"hung (no result after {limit:.2f} s) and was killed"
        log.error("worker %s[%d] computed a batch of %d for %.2f s: taken as hung", self.ref,
                  worker.index, batch.size, limit)
        self._crashed(worker, cause, started=0)
        if self._on_hung is not None:
            self._on_hung(batch)
        else:
            self._on_done(batch, None, WorkerCrashedError(
                f"worker {worker.index} of {self.label} {cause} while computing this "
                "request"), None)

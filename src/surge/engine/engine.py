"""The serving Engine: models, their schedulers and worker pools, behind one async API.

The Engine lives in the front end's asyncio loop. A request's path:

    infer(inputs) -> Request (validated, deadline, priority) -> Scheduler queue
    dispatcher task: expire -> next_batch -> WorkerPool.dispatch (Batch -> shm slot)
    worker: Runner.run -> outputs in shm -> BatchDone on the pipe (loop.add_reader)
    Scheduler.complete -> per-request slices -> the awaiting futures
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from surge.errors import (
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    NotFoundError,
    QueueFullError,
    SurgeError,
)
from surge.repository import ModelConfig, Repository
from surge.runtimes.base import Signature
from surge.scheduler import Batch, Request, Scheduler, SchedulerConfig, shape_key
from surge.server.metrics import SurgeMetrics
from surge.workers.messages import BatchDone
from surge.workers.pool import (
    BatchResult,
    WorkerPool,
    available_cores,
    cuda_device_count,
    plan_instances,
)

log = logging.getLogger(__name__)

# Priority 0 means "default", as in Triton: it maps to this level. Levels 1..7 are served
# before default traffic, higher numbers after it.
DEFAULT_PRIORITY_LEVEL = 8
UNLOAD_GRACE_S = 30.0


@dataclass(frozen=True)
class ModelHandle:
    """A served model version as the protocol layer describes it."""

    name: str
    version: int
    versions: tuple[int, ...]
    config: ModelConfig
    signature: Signature
    platform: str
    devices: tuple[str, ...] = ()  # where the instances run, as their workers reported it


@dataclass(frozen=True)
class ModelStats:
    """Triton-style statistics of one model version. Durations are (count, total ns)."""

    name: str
    version: int
    inference_count: int
    execution_count: int
    last_inference: int  # ms since the epoch, 0 before the first
    success: tuple[int, int]
    fail: tuple[int, int]
    queue: tuple[int, int]
    compute_input: tuple[int, int]
    compute_infer: tuple[int, int]
    compute_output: tuple[int, int]
    batch_stats: dict[int, tuple[int, int]] = field(default_factory=dict)


class _Counters:
    """Mutable running totals behind ModelStats."""

    def __init__(self) -> None:
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference = 0
        self.success = [0, 0]
        self.fail = [0, 0]
        self.queue = [0, 0]
        self.compute_input = [0, 0]
        self.compute_infer = [0, 0]
        self.compute_output = [0, 0]
        self.batch_stats: dict[int, list[int]] = {}

    @staticmethod
    def add(pair: list[int], ns: int, count: int = 1) -> None:
        pair[0] += count
        pair[1] += ns

    def snapshot(self, name: str, version: int) -> ModelStats:
        return ModelStats(
            name, version, self.inference_count, self.execution_count, self.last_inference,
            tuple(self.success), tuple(self.fail), tuple(self.queue),  # type: ignore[arg-type]
            tuple(self.compute_input), tuple(self.compute_infer),  # type: ignore[arg-type]
            tuple(self.compute_output),  # type: ignore[arg-type]
            {size: (c, ns) for size, (c, ns) in sorted(self.batch_stats.items())},
        )


def scheduler_config(config: ModelConfig, workers: int) -> SchedulerConfig:
    """The scheduler's own sub-config, from the model config."""
    batching = config.batching.enabled and config.max_batch_size > 0
    timeout = config.queue.default_timeout_ms
    return SchedulerConfig(
        max_batch_size=config.max_batch_size if batching else 1,
        max_queue_delay_s=config.batching.max_queue_delay_ms / 1e3,
        preferred_batch_sizes=tuple(config.batching.preferred_batch_sizes) if batching else (),
        max_queue_size=config.queue.max_size,
        default_timeout_s=timeout / 1e3 if timeout is not None else None,
        workers=workers,
    )


class ServedModel:
    """One model version being served: scheduler + worker pool + dispatcher task."""

    def __init__(self, engine: Engine, name: str, version: int, versions: tuple[int, ...],
                 config: ModelConfig, variant_ref: str | None) -> None:
        self.engine = engine
        self.name, self.version, self.versions, self.config = name, version, versions, config
        cores = available_cores()
        placements = plan_instances(config.instances, config.threads, config.device, cores,
                                    cuda_device_count(config.device))
        self.scheduler = Scheduler(scheduler_config(config, len(placements)),
                                   batched=config.max_batch_size > 0)
        self.pool = WorkerPool(
            str(engine.repository.root), variant_ref or name,
            None if variant_ref else version, placements, self._done,
            on_restart=self._restarted, on_requeue=self._requeue, on_ready=self._wake,
            max_batch_size=max(1, config.max_batch_size), spin_wait=config.spin_wait,
        )
        self.handle: ModelHandle | None = None
        self.accepting = False
        self.counters = _Counters()
        self._futures: dict[int, asyncio.Future[dict[str, np.ndarray]]] = {}
        self._ids = itertools.count(1)
        self._wake_event = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        labels = engine.metrics
        self._m_queue = labels.queue_duration.labels(name)
        self._m_compute = labels.compute_duration.labels(name)
        self._m_batch = labels.batch_size.labels(name)
        self._m_depth = labels.queue_depth.labels(name)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.pool.start()
        assert self.pool.signature is not None
        signature = self.pool.signature
        self.handle = ModelHandle(self.name, self.version, self.versions, self.config, signature,
                                  signature.platform, self.pool.devices())
        self._task = asyncio.create_task(self._dispatcher(), name=f"surge-dispatch-{self.name}")
        self.accepting = True

    @property
    def ready(self) -> bool:
        return self.accepting and self.pool.ready

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let accepted requests finish within `grace_s`, stop the workers."""
        self.accepting = False
        self._wake()
        deadline = self._loop.time() + grace_s
        while not self.scheduler.idle() and self._loop.time() < deadline:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), deadline - self._loop.time())
            except TimeoutError:
                break
        for request in self.scheduler.drain():
            self._reject(request, ModelNotReadyError(f"model {self.name!r} was stopped"))
        if self._task is not None:
            self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        await self.pool.stop()
        self._m_depth.set(0)

    # -- requests ----------------------------------------------------------------------------
    def make_request(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None,
                     priority: int, timeout_us: int | None, request_id: str) -> Request:
        """Validate against the signature and build the queued Request."""
        assert self.handle is not None
        signature = self.handle.signature
        signature.validate_inputs(inputs)
        if outputs is not None:
            for name in outputs:
                signature.output(name)
        if priority < 0:
            raise InputError(f"priority must be >= 0, got {priority}")
        if timeout_us is not None and timeout_us < 0:
            raise InputError(f"timeout must be >= 0 microseconds, got {timeout_us}")
        batch = 1
        if signature.batched:
            batch = next(iter(inputs.values())).shape[0]
            if batch < 1:
                raise InputError(f"batch size must be at least 1, got {batch}")
        now = self._loop.time()
        return Request(
            next(self._ids), inputs, batch, shape_key(inputs, signature.batched), now,
            now + timeout_us / 1e6 if timeout_us else None,
            priority or DEFAULT_PRIORITY_LEVEL,
            tuple(outputs) if outputs is not None else None, request_id,
        )

    async def infer(self, request: Request) -> dict[str, np.ndarray]:
        if not self.accepting:
            raise ModelNotReadyError(f"model {self.name!r} is not accepting requests")
        try:
            request = self.scheduler.add(request, request.arrival)
        except QueueFullError:
            self.engine.metrics.rejected.labels(self.name, "admission").inc()
            raise
        future: asyncio.Future[dict[str, np.ndarray]] = self._loop.create_future()
        self._futures[request.id] = future
        self._m_depth.set(self.scheduler.queued)
        self._wake()
        try:
            return await future
        except asyncio.CancelledError:
            # Client went away: a queued request leaves the queue; a computing one is dropped.
            self._futures.pop(request.id, None)
            if self.scheduler.cancel(request.id) is not None:
                self._m_depth.set(self.scheduler.queued)
                self._wake()
            raise

    # -- dispatcher --------------------------------------------------------------------------
    def _wake(self) -> None:
        self._wake_event.set()

    async def _dispatcher(self) -> None:
        while True:
            await self._wake_event.wait()
            self._wake_event.clear()
            try:
                self._pump()
            except Exception:  # a bug here must not silently stop the model
                log.exception("dispatcher of model %s failed a step", self.name)

    def _pump(self) -> None:
        now = self._loop.time()
        for request in self.scheduler.expire(now):
            self.engine.metrics.expired.labels(self.name).inc()
            self._reject(request, DeadlineExceededError(
                f"deadline exceeded after {(now - request.arrival) * 1e3:.1f} ms in the queue"))
        pool = self.pool
        while (batch := self.scheduler.next_batch(now, pool.idle_count,
                                                  pool.idle_workers)) is not None:
            self._send(batch, now)
        self._m_depth.set(self.scheduler.queued)
        if self.scheduler.idle():
            self._idle.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wakeup = self.scheduler.next_wakeup(now, self.pool.idle_count)
        if wakeup is not None:
            self._timer = self._loop.call_at(wakeup, self._wake)

    def _send(self, batch: Batch, now: float) -> None:
        waited = 0
        for request in batch.requests:
            waited += int((now - request.arrival) * 1e9)
            self._m_queue.observe(now - request.arrival)
        _Counters.add(self.counters.queue, waited, len(batch.requests))
        self._m_batch.observe(batch.size)
        self.pool.dispatch(batch)

    def _done(self, batch: Batch, outputs: dict[str, np.ndarray] | None,
              error: Exception | None, result: BatchResult | None) -> None:
        """A worker finished `batch` (outputs) or failed it (error): answer its requests."""
        now = self._loop.time()
        self._m_compute.observe(now - batch.dispatched)
        if outputs is None:
            for request in self.scheduler.fail(batch):
                self._reject(request, error or SurgeError("batch failed"), now)
        else:
            started = time.perf_counter_ns()
            compute_s = result.service_s if result is not None else None
            for completed in self.scheduler.complete(batch, outputs, now, compute_s):
                future = self._futures.pop(completed.request.id, None)
                if future is not None and not future.done():
                    future.set_result(completed.outputs)
                _Counters.add(self.counters.success, int((now - completed.request.arrival) * 1e9))
            self._count_batch(batch, result.done if result else None,
                              time.perf_counter_ns() - started)
        self._wake()

    def _count_batch(self, batch: Batch, done: BatchDone | None, split_ns: int) -> None:
        c = self.counters
        c.inference_count += batch.size
        c.execution_count += 1
        c.last_inference = int(time.time() * 1e3)
        if done is not None:
            _Counters.add(c.compute_input, done.input_ns)
            _Counters.add(c.compute_infer, done.infer_ns)
            _Counters.add(c.compute_output, done.output_ns + split_ns)
            pair = c.batch_stats.setdefault(batch.size, [0, 0])
            _Counters.add(pair, done.input_ns + done.infer_ns + done.output_ns)

    def _reject(self, request: Request, error: Exception, now: float | None = None) -> None:
        future = self._futures.pop(request.id, None)
        if future is not None and not future.done():
            future.set_exception(error)
        now = self._loop.time() if now is None else now
        _Counters.add(self.counters.fail, int((now - request.arrival) * 1e9))

    def _requeue(self, batch: Batch) -> None:
        self.scheduler.requeue(batch)
        self._wake()

    def _restarted(self) -> None:
        self.engine.metrics.worker_restarts.labels(self.name).inc()


class Engine:
    """Serves the models of one repository: load/unload, readiness, inference, statistics."""

    def __init__(self, repository: Repository, *, models: list[str] | None = None) -> None:
        self.repository = repository
        self.metrics = SurgeMetrics()
        self._selected = models
        self._served: dict[str, dict[int, ServedModel]] = {}
        self._state: dict[str, tuple[str, str]] = {}  # name -> (state, reason) when not served
        self._locks: dict[str, asyncio.Lock] = {}
        self._live = False
        self._started = False  # start() finished: every selected model loaded (or failed)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the selected models (all in the repository when none were named)."""
        names = self._selected if self._selected is not None else self.repository.model_names()
        self._live = True
        results = await asyncio.gather(*(self.load(n) for n in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if self._selected is not None:
                    await self.stop(0.0)
                    raise result
                log.warning("model %s not loaded: %s", name, result)
        self._started = True

    async def stop(self, grace_s: float = 30.0) -> None:
        """Drain accepted work (at most `grace_s`), then stop every worker."""
        served = [m for versions in self._served.values() for m in versions.values()]
        self._started = False
        for model in served:  # at once, before any drain task runs
            model.accepting = False
        # Still found while draining: new requests get ModelNotReadyError (503), not 404.
        await asyncio.gather(*(m.stop(grace_s) for m in served))
        self._served.clear()
        self._live = False

    def live(self) -> bool:
        return self._live

    def ready(self) -> bool:
        """Started, and every loaded model is ready (all instances warm)."""
        return self._live and self._started and all(
            m.ready for versions in self._served.values() for m in versions.values()
        )

    # -- lookup ------------------------------------------------------------------------------
    def _find(self, name: str, version: int | None) -> ServedModel:
        versions = self._served.get(name)
        if not versions:
            state = self._state.get(name)
            if state is not None and state[0] == "LOADING":
                raise ModelNotReadyError(f"model {name!r} is loading")
            raise NotFoundError(f"model {name!r} is not loaded")
        if version is None:
            return versions[max(versions)]
        served = versions.get(int(version))
        if served is None:
            raise NotFoundError(
                f"model {name!r} has no served version {version} (served: {sorted(versions)})"
            )
        return served

    def model_ready(self, name: str, version: int | None = None) -> bool:
        try:
            return self._find(name, version).ready
        except SurgeError:
            return False

    def model(self, name: str, version: int | None = None) -> ModelHandle:
        try:
            served = self._find(name, version)
        except ModelNotReadyError as exc:
            raise NotFoundError(str(exc)) from None
        assert served.handle is not None
        return served.handle

    def index(self) -> list[dict[str, str]]:
        """One row per model in the repository (per served version when loaded)."""
        rows: list[dict[str, str]] = []
        for name in self.repository.model_names():
            versions = self._served.get(name)
            if versions:
                for version, served in sorted(versions.items()):
                    state = "READY" if served.ready else "UNAVAILABLE"
                    reason = "" if served.ready else (
                        "no live worker" if served.accepting else "draining")
                    rows.append({"name": name, "version": str(version), "state": state,
                                 "reason": reason})
                continue
            state, reason = self._state.get(name, ("UNAVAILABLE", "unloaded"))
            rows.append({"name": name, "version": "", "state": state, "reason": reason})
        return rows

    def stats(self, name: str, version: int | None = None) -> ModelStats:
        served = self._find(name, version)
        return served.counters.snapshot(served.name, served.version)

    # -- load / unload -----------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str) -> None:
        """(Re)load `name`: the new instances start before the old ones drain."""
        async with self._lock(name):
            self._state[name] = ("LOADING", "")
            try:
                fresh = await self._start_model(name)
            except Exception as exc:
                self._state[name] = ("UNAVAILABLE", str(exc))
                raise
            old = self._served.get(name, {})
            self._served[name] = fresh
            self._state.pop(name, None)
            await asyncio.gather(*(m.stop(UNLOAD_GRACE_S) for m in old.values()))

    async def _start_model(self, name: str) -> dict[int, ServedModel]:
        config = self.repository.config(name)
        served_versions = tuple(self.repository.served_versions(name, config))
        if config.variant:
            targets: list[tuple[int, str | None]] = [
                (served_versions[-1] if served_versions else 1, f"{name}@{config.variant}")
            ]
        else:
            if not served_versions:
                raise NotFoundError(f"model {name!r} has no servable version")
            targets = [(v, None) for v in served_versions]
        models = {v: ServedModel(self, name, v, served_versions or (v,), config, ref)
                  for v, ref in targets}
        try:
            await asyncio.gather(*(m.start() for m in models.values()))
        except BaseException:
            await asyncio.gather(*(m.stop(0.0) for m in models.values()),
                                 return_exceptions=True)
            raise
        return models

    async def unload(self, name: str) -> None:
        """Stop serving `name` after its accepted requests finish."""
        async with self._lock(name):
            old = self._served.get(name)
            if old is None:
                self.repository.model_dir(name)  # NotFoundError for an unknown model
            await asyncio.gather(*(m.stop(UNLOAD_GRACE_S) for m in (old or {}).values()))
            self._served.pop(name, None)
            self._state[name] = ("UNAVAILABLE", "unloaded")

    # -- inference ---------------------------------------------------------------------------
    async def infer(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, np.ndarray],
        *,
        outputs: list[str] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Queue one request and await its outputs (see the module docstring for the path)."""
        served = self._find(name, version)
        if not served.ready:
            raise ModelNotReadyError(f"model {name!r} is not ready")
        request = served.make_request(inputs, outputs, priority, timeout_us, request_id)
        return await served.infer(request)

"""One served model version: the pure scheduler, a pool of instances and the loop that drives both.

The driver lives in the front end's asyncio loop and is all a request meets between the
protocol layer and an instance:

    make_request(inputs) -> Request (validated, deadline, priority)
    infer(request)       -> Scheduler.add (admission) -> await the request's future
    step(), on a wake-up -> expire(now) -> next_batch(now, idle) -> pool.dispatch(batch)
    on_done(batch)       -> Scheduler.complete -> per-request slices -> the awaiting futures

The pool and the clock come from the host (the Engine), so the driver runs unchanged against a
scripted pool and a hand-advanced clock in unit tests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Protocol

import numpy as np
from prometheus_client import Counter

from surge.engine.failures import failure_reason
from surge.engine.instances import Clock, InstancePool, PoolEvents, PoolSpec
from surge.engine.interface import ModelHandle
from surge.engine.metrics import SurgeMetrics
from surge.engine.probe import probe_rows
from surge.engine.route import check_pin, request_route
from surge.engine.sequences import SequenceStore, open_sequences
from surge.engine.stats import Counters
from surge.engine.timing import LAG_HOPS, LoopLag, RequestTiming, request_timing, worker_seconds
from surge.errors import (
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    QueueFullError,
    SurgeError,
    WorkerCrashedError,
)
from surge.repository import ModelConfig
from surge.repository.config import ORIGINAL
from surge.runtimes.base import Signature
from surge.scheduler import Batch, Request, Scheduler, SchedulerConfig, shape_key
from surge.scheduler.types import check_timeout, priority_level
from surge.workers.exits import started_within
from surge.workers.pool import BatchResult

log = logging.getLogger(__name__)

# The load-time latency probe gives up after this long: a model that slow still loads, and
# learns its batch times from traffic instead.
PROBE_TIMEOUT_S = 60.0


class ModelHost(Protocol):
    """What a served model takes from the engine that holds it."""

    @property
    def metrics(self) -> SurgeMetrics: ...

    @property
    def clock(self) -> Clock: ...

    def make_pool(self, spec: PoolSpec, events: PoolEvents) -> InstancePool: ...


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
        slo_s=config.slo_p99_ms / 1e3 if config.slo_p99_ms is not None else None,
        priorities=config.queue.level_policies(),
        timeout_action=config.queue.timeout_action,
        allow_timeout_override=config.queue.allow_timeout_override,
    )


class ServedModel:
    """One model version being served: scheduler + instance pool + driver task."""

    def __init__(self, host: ModelHost, name: str, version: int, versions: tuple[int, ...],
                 config: ModelConfig, variant_ref: str | None) -> None:
        self.name, self.version, self.versions, self.config = name, version, versions, config
        self.variant_name = config.variant or ORIGINAL  # what responses say served them
        self.metrics = host.metrics
        self._clock = host.clock
        self.pool = host.make_pool(
            PoolSpec(variant_ref or name, None if variant_ref else version, config), self)
        self.scheduler = Scheduler(scheduler_config(config, self.pool.instances),
                                   batched=config.max_batch_size > 0)
        self.handle: ModelHandle | None = None
        self.sequences: SequenceStore | None = None  # a sequence model's states (start())
        self.accepting = False
        self.counters = Counters(config.response_cache)
        self.counters.latency_line = self.scheduler.latency_line
        self.counters.instance_lines = self.scheduler.instance_lines
        self._futures: dict[int, asyncio.Future[dict[str, np.ndarray]]] = {}
        self._timings: dict[int, RequestTiming] = {}  # requests whose front end times them
        self._ids = itertools.count(1)
        self._wake_event = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._m_queue = self.metrics.queue_duration.labels(name)
        self._m_compute = self.metrics.compute_duration.labels(name)
        self._m_batch = self.metrics.batch_size.labels(name)
        self._m_depth = self.metrics.queue_depth.labels(name)
        self._m_live = self.metrics.live_instances.labels(name)
        self._m_wait = self.metrics.batch_wait.labels(name)
        self._m_ratio = self.metrics.batch_time_ratio.labels(name)
        self._m_fit = (self.metrics.batch_time_fit.labels(name, "intercept"),
                       self.metrics.batch_time_fit.labels(name, "per_item"))
        slo = config.slo_p99_ms
        self._slo_s = slo / 1e3 if slo is not None else None
        self._slo_aim_s = (self._slo_s or 0.0) * self.scheduler.config.slo_headroom
        self._m_slo = (self.metrics.slo_requests.labels(name, "yes"),
                       self.metrics.slo_requests.labels(name, "no"))
        # Children looked up once: the refusal path runs thousands of times a second in a surge.
        self._m_refused = self.metrics.rejected.labels(name, "admission")
        self._m_shed = {reason: self.metrics.shed.labels(name, reason)
                        for reason in ("queue_full", "predicted_miss", "deadline", "late")}
        # A ladder rung counts its answers into the variant mix (one add per batch).
        self.answers_counter: Counter | None = None
        self._lag = LoopLag(self._loop, self._clock, self._set_lag)
        self.live = 0  # instances taking batches, as the pool reported them
        self._probes: set[int] = set()  # ids of the latency probe's batches in flight

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await started_within(self.pool.start(), self.pool.stop, self.config.load_timeout_s,
                             f"model {self.name!r}")
        signature = self.pool.signature
        assert signature is not None, "a started pool knows the model's signature"
        self.handle = ModelHandle(self.name, self.version, self.versions, self.config, signature,
                                  signature.platform, self.pool.devices())
        self.sequences = open_sequences(self.name, self.config, signature, self._clock,
                                        self.metrics.live_sequences, self.counters)
        self._set_live(self.pool.instances)
        self._task = asyncio.create_task(self._drive(), name=f"surge-dispatch-{self.name}")
        if self.config.slo_p99_ms is not None:
            await self._probe_latency(signature)
        self.accepting = True

    async def _probe_latency(self, signature: Signature) -> None:
        """Time a batch of 1 and a full batch before accepting requests, so admission and the
        SLO batching predict from the first request (else the first burst after a load is
        admitted blind). The probe's batches count in no statistics."""
        for size in sorted({1, self.scheduler.config.max_batch_size}):
            inputs = probe_rows(self.config, signature, size)
            if inputs is None:
                log.info("model %s: no latency probe (an input has a variable dim or is BYTES)",
                         self.name)
                return
            now = self._clock()
            request = Request(next(self._ids), inputs, size if signature.batched else 1,
                              shape_key(inputs, signature.batched), now)
            future: asyncio.Future[dict[str, np.ndarray]] = self._loop.create_future()
            self._futures[request.id] = future
            batch = self.scheduler.batch_of((request,), now)
            self._probes.add(batch.id)
            self.pool.dispatch(batch)
            try:
                await asyncio.wait_for(future, PROBE_TIMEOUT_S)
            except (SurgeError, TimeoutError) as error:
                log.warning("model %s: latency probe of batch %d failed: %s", self.name, size,
                            error)
                return
            finally:
                self._futures.pop(request.id, None)

    @property
    def ready(self) -> bool:
        return self.accepting and self.pool.ready

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let accepted requests finish within `grace_s`, stop the instances."""
        self.accepting = False
        if self.sequences is not None:  # unload and reload drop every sequence's state
            self.sequences.close()
        self.wake()
        deadline = self._clock() + grace_s
        while not self.scheduler.idle() and self._clock() < deadline:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), deadline - self._clock())
            except TimeoutError:
                break
        self._reject_queued()
        if self._task is not None:
            self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        await self.pool.stop()
        # Stopping the pool sends the batches still waiting behind a computing one back to the
        # queue, which nothing drives any more: answer them too, or their clients would hang.
        self._reject_queued()
        self._m_depth.set(0)
        self._set_live(0)

    def _reject_queued(self) -> None:
        for request in self.scheduler.drain():
            self._reject(request, ModelNotReadyError(f"model {self.name!r} was stopped"))

    # -- requests ----------------------------------------------------------------------------
    def make_request(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None,
                     priority: int, timeout_us: int | None, request_id: str) -> Request:
        """Validate against the signature and build the queued Request."""
        assert self.handle is not None, "requests reach a model only once it started"
        signature = self.handle.signature
        signature.validate_inputs(inputs)
        if outputs is not None:
            for name in outputs:
                signature.output(name)
        level = priority_level(priority)
        check_pin(request_route.get(), (self.variant_name,))
        check_timeout(timeout_us)
        batch = 1
        if signature.batched:
            batch = next(iter(inputs.values())).shape[0]
            if batch < 1:
                raise InputError(f"batch size must be at least 1, got {batch}")
        now = self._clock()
        return Request(
            next(self._ids), inputs, batch, shape_key(inputs, signature.batched), now,
            now + timeout_us / 1e6 if timeout_us else None,
            level,
            tuple(outputs) if outputs is not None else None, request_id,
        )

    async def infer(self, request: Request) -> dict[str, np.ndarray]:
        if not self.accepting:
            raise ModelNotReadyError(f"model {self.name!r} is not accepting requests")
        self._lag.sample(request.arrival)
        try:
            request = self.scheduler.add(request, request.arrival)
        except QueueFullError as error:
            self._m_refused.inc()
            self._m_shed[error.reason].inc()
            self._count_failed(request, error)
            raise
        future: asyncio.Future[dict[str, np.ndarray]] = self._loop.create_future()
        self._futures[request.id] = future
        timing = request_timing.get()
        if timing is not None:
            timing.queued = request.arrival
            self._timings[request.id] = timing
        self._m_depth.set(self.scheduler.queued)
        self.wake()
        try:
            outputs = await future
            if (route := request_route.get()) is not None:
                route.served = self.variant_name
                if route.version is None:
                    route.version = self.version
            return outputs
        except asyncio.CancelledError as cancelled:
            # Client went away: a queued request leaves the queue; a computing one is dropped.
            if self._futures.pop(request.id, None) is not None:
                self._count_failed(request, cancelled)
            if self.scheduler.cancel(request.id) is not None:
                self._m_depth.set(self.scheduler.queued)
                self.wake()
            raise
        finally:
            if timing is not None:
                self._timings.pop(request.id, None)

    # -- driver ------------------------------------------------------------------------------
    def wake(self) -> None:
        """Run a driver step soon: a request, a result, a free instance or a timer arrived."""
        self._wake_event.set()

    async def _drive(self) -> None:
        while True:
            await self._wake_event.wait()
            self._wake_event.clear()
            try:
                self.step()
            except Exception:  # a bug here must not silently stop the model
                log.exception("dispatcher of model %s failed a step", self.name)

    def step(self) -> None:
        """Expire what is late, hand out every batch the pool can take, set the next timer."""
        now = self._clock()
        for request in self.scheduler.expire(now):
            self.metrics.expired.labels(self.name).inc()
            self._m_shed["deadline"].inc()
            self._reject(request, DeadlineExceededError(
                f"deadline exceeded after {(now - request.arrival) * 1e3:.1f} ms in the queue"))
        pool = self.pool
        if self.live > pool.instances:  # the pool scaled down: predict with what is left
            self._set_live(self.live)
        while (batch := self.scheduler.next_batch(now, pool.idle_count,
                                                  pool.idle_workers)) is not None:
            self._send(batch, now)
        for request in self.scheduler.take_late():
            self._m_shed["late"].inc()
            self._reject(request, DeadlineExceededError(
                "refused before computing: its batch was predicted to finish past the deadline"))
        self._m_depth.set(self.scheduler.queued)
        if self.scheduler.idle():
            self._idle.set()
        self._schedule_wakeup(self.scheduler.next_wakeup(now, pool.idle_count))

    def _schedule_wakeup(self, wakeup: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wakeup is not None:
            # A delay, not loop.call_at: `wakeup` is on the driver's clock.
            self._timer = self._loop.call_later(wakeup - self._clock(), self.wake)

    def _send(self, batch: Batch, now: float) -> None:
        waited = 0
        for request in batch.requests:
            waited += int((now - request.arrival) * 1e9)
            self._m_queue.observe(now - request.arrival)
            if self._timings and (timing := self._timings.get(request.id)) is not None:
                timing.dispatched, timing.batch_size = now, batch.size
        self.counters.queue.add(waited, len(batch.requests))
        self._m_wait.observe(now - min(r.arrival for r in batch.requests))
        self._m_batch.observe(batch.size)
        self.pool.dispatch(batch)

    # -- what the pool reports (PoolEvents) ----------------------------------------------------
    def on_done(self, batch: Batch, outputs: dict[str, np.ndarray] | None,
                error: Exception | None, result: BatchResult | None) -> None:
        """An instance finished `batch` (outputs) or failed it (error): answer its requests."""
        now = self._clock()
        if batch.id in self._probes:
            self._probe_done(batch, outputs, error, result, now)
            return
        self._m_compute.observe(now - batch.dispatched)
        if outputs is None:
            for request in self.scheduler.fail(batch):
                self._reject(request, error or SurgeError("batch failed"), now)
        else:
            self._answer(batch, outputs, result, now)
        self.wake()

    def _answer(self, batch: Batch, outputs: dict[str, np.ndarray], result: BatchResult | None,
                now: float) -> None:
        rejected = result.done.rejected if result is not None else ()
        refused = batch.refused(rejected) if rejected else {}
        if refused and len(refused) == len(batch.requests):  # every row refused: none computed
            self.scheduler.fail(batch)
            for i, request in enumerate(batch.requests):
                self._reject(request, InputError(refused[i]), now)
            return
        started = time.perf_counter_ns()
        compute_s, instance = (result.service_s, result.instance) if result else (None, 0)
        self._observe_fit(batch, now - batch.dispatched if compute_s is None else compute_s)
        feedback = self.scheduler.slo_feedback
        answered = 0
        completed_all = self.scheduler.complete(batch, outputs, now, compute_s, instance)
        for i, completed in enumerate(completed_all):
            if i in refused:  # its preprocessing refused it: bad input, the others answered
                self._reject(completed.request, InputError(refused[i]), now)
                continue
            future = self._futures.pop(completed.request.id, None)
            if self._timings and (timing := self._timings.get(completed.request.id)) is not None:
                timing.done = now
                timing.compute_s = worker_seconds(result)
            if future is None or future.done():  # its client went: counted failed then
                continue
            future.set_result(completed.outputs)
            answered += 1
            if feedback is not None:
                future.add_done_callback(partial(self._judge, completed.request.arrival))
            self.counters.success.add(int((now - completed.request.arrival) * 1e9))
            if self._slo_s is not None:
                latency = now - completed.request.arrival
                self._m_slo[0 if latency <= self._slo_s else 1].inc()
        if self.answers_counter is not None and answered:
            self.answers_counter.inc(answered)
        self.counters.count_batch(batch.size, result.done if result else None,
                                  time.perf_counter_ns() - started, int(time.time() * 1e3))

    def _judge(self, arrival: float, _: object) -> None:
        """Feed the admission feedback one answer's latency as its client saw it: this runs
        after the awaiting task has resumed (its wake-up was queued first), so the loop's
        backlog on the way out is in it; the backlog on the way in, before `arrival`, is the
        lag's one hop. Judged when the answer is set, a saturated loop's delay after it is
        never seen, and admission keeps planning past what clients see."""
        feedback = self.scheduler.slo_feedback
        if feedback is not None:
            now = self._clock()
            seen = now - arrival + self.scheduler.lag_s / LAG_HOPS
            feedback.observe(seen <= self._slo_aim_s, now, arrival)

    def _probe_done(self, batch: Batch, outputs: dict[str, np.ndarray] | None,
                    error: Exception | None, result: BatchResult | None, now: float) -> None:
        """The latency probe's batch: its time is learnt, nothing else is counted."""
        self._probes.discard(batch.id)
        (request,) = batch.requests
        future = self._futures.get(request.id)
        if outputs is None:
            self.scheduler.fail(batch)
            if future is not None and not future.done():
                future.set_exception(error or SurgeError("latency probe failed"))
        else:
            compute_s, instance = (result.service_s, result.instance) if result else (None, 0)
            self.scheduler.complete(batch, outputs, now, compute_s, instance)
            if future is not None and not future.done():
                future.set_result({})
        self.wake()

    def _observe_fit(self, batch: Batch, seconds: float) -> None:
        """The latency model against this batch (before learning from it), and its line."""
        predicted = self.scheduler.fitted_time(batch.size)
        if predicted:
            self._m_ratio.observe(seconds / predicted)
        line = self.scheduler.latency_line()
        if line is not None:
            self._m_fit[0].set(line[0])
            self._m_fit[1].set(line[1])

    def on_requeue(self, batch: Batch) -> None:
        self.scheduler.requeue(batch, awaited=self._futures)
        self.wake()

    def on_restart(self) -> None:
        self.metrics.worker_restarts.labels(self.name).inc()
        self._set_live(self.live - 1)

    def on_ready(self) -> None:
        self._set_live(self.live + 1)
        self.wake()

    def on_hung(self, batch: Batch) -> None:
        """Its instance hung: the requests go again once if their deadline allows, or fail."""
        now = self._clock()
        self.metrics.worker_hangs.labels(self.name).inc()
        if batch.id in self._probes:  # not retried: the model loads and learns from traffic
            self._probe_done(batch, None, WorkerCrashedError("latency probe hung"), None, now)
            return
        for request in self.scheduler.retry(batch, now, awaited=self._futures):
            why = ("it hung on the retry too" if request.retries else
                   "no time left before its deadline to retry it")
            self._reject(request, WorkerCrashedError(
                f"the instance of model {self.name!r} computing this request hung and was "
                f"stopped; {why}"), now)
        self.wake()

    def on_unavailable(self, error: Exception) -> None:
        for request in self.scheduler.drain():
            self._reject(request, error)
        self._m_depth.set(0)

    def on_spawn_failure(self) -> None:
        self.metrics.worker_spawn_failures.labels(self.name).inc()

    def batch_estimate(self, size: int) -> float | None:
        return self.scheduler.batch_time(size)

    def _set_lag(self, seconds: float) -> None:
        """The front end's lag changed: admission and dispatch allow for it."""
        self.scheduler.lag_s = seconds

    def _set_live(self, live: int) -> None:
        """Instances taking batches: admission and deadlines predict with these (a Ray pool
        grows and shrinks; an instance lost meanwhile computes nothing)."""
        self.live = max(0, min(self.pool.instances, live))
        self._m_live.set(self.live)
        self.scheduler.set_workers(self.live)

    def instances_note(self) -> str:
        """'' with every instance live, else how many are (for the repository index)."""
        if self.live >= self.pool.instances:
            return ""
        return f"{self.live} of {self.pool.instances} instances live"

    def _reject(self, request: Request, error: Exception, now: float | None = None) -> None:
        future = self._futures.pop(request.id, None)
        if future is None or future.done():  # its client went: counted failed then
            return
        future.set_exception(error)
        self._count_failed(request, error, now)

    def _count_failed(self, request: Request, error: BaseException,
                      now: float | None = None) -> None:
        """A request refused, dropped or left by its client: Triton's `fail`, by its reason."""
        now = self._clock() if now is None else now
        self.counters.count_failure(int((now - request.arrival) * 1e9), failure_reason(error))

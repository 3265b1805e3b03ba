"""One served pipeline: its steps run in order for each request, each a model or a processor.

    make_request(inputs) -> PipelineRequest (validated against the pipeline's own signature)
    infer(request)       -> for each step in DAG order:
                              model step:     Engine.infer(model, ...) -- the model's own
                                              scheduler batches it with every other request
                              processor step: the function on the request's rows, in the
                                              processor threads (never on the event loop)
                         -> the pipeline's outputs

A failing step fails the request with an error that names the step, keeping the error's kind
(bad input stays 400, a full queue 503). Statistics are the pipeline's own (Triton-style, plus
`steps`: each processor step's calls and thread CPU time); every step's time and failures, and each
processor step's CPU, are Prometheus metrics labelled by pipeline and step.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Protocol

import numpy as np

from surge.engine.instances import Clock
from surge.engine.interface import ModelHandle
from surge.engine.metrics import SurgeMetrics
from surge.engine.route import check_pin, request_route
from surge.engine.stats import Counters, ModelStats
from surge.engine.timing import RequestTiming, request_timing
from surge.errors import (
    ConfigError,
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    NotFoundError,
    ServingError,
    SurgeError,
)
from surge.pipeline.accept import Accept
from surge.pipeline.graph import StepTypes, check_step_models, check_types, declared, plan
from surge.pipeline.metrics import StepCpu, StepTimes, step_metrics
from surge.pipeline.steps import ProcessorStep, processor_step
from surge.repository import ModelConfig, Repository
from surge.repository.config import ORIGINAL, StepConfig
from surge.runtimes.base import Signature
from surge.scheduler.types import priority_level

log = logging.getLogger(__name__)

PLATFORM = "pipeline"


class PipelineHost(Protocol):
    """What a pipeline takes from the engine that serves it and its models."""

    repository: Repository

    @property
    def metrics(self) -> SurgeMetrics: ...

    @property
    def clock(self) -> Clock: ...

    def model(self, name: str, version: int | None = None) -> ModelHandle: ...

    def model_ready(self, name: str, version: int | None = None) -> bool: ...

    async def ensure_served(self, name: str) -> None: ...

    async def infer(self, name: str, version: int | None, inputs: dict[str, np.ndarray], *,
                    outputs: list[str] | None = None, priority: int = 0,
                    timeout_us: int | None = None, request_id: str = "") -> dict[str, np.ndarray]:
        ...


@dataclass(frozen=True)
class PipelineRequest:
    """One validated request to a pipeline."""

    inputs: Mapping[str, np.ndarray]  # as the caller gave them: the run copies them once
    outputs: tuple[str, ...] | None
    rows: int
    arrival: float
    deadline: float | None
    priority: int
    request_id: str


def pipeline_signature(config: ModelConfig) -> Signature:
    """The V2 signature a pipeline's config declares."""
    batched = config.max_batch_size > 0
    return Signature(declared(config.inputs), declared(config.outputs), batched=batched,
                     max_batch_size=config.max_batch_size if batched else 0, platform=PLATFORM)


@dataclass(frozen=True)
class PipelineStats(ModelStats):
    """A pipeline's statistics: a model's, and per processor step its calls and the CPU they
    took in the front end ({step: {calls, cpu_ns, inline_calls, inline_cpu_ns}})."""

    steps: dict[str, dict[str, int]] = field(default_factory=dict)


class PipelineCounters(Counters):
    """A pipeline's running totals; its snapshot adds the processor steps' CPU."""

    def __init__(self, cpu: Mapping[str, StepCpu]) -> None:
        super().__init__()
        self._cpu = cpu

    def snapshot(self, name: str, version: int) -> PipelineStats:
        base = super().snapshot(name, version)
        return PipelineStats(**{f.name: getattr(base, f.name) for f in fields(base)},
                             steps={step: cpu.snapshot() for step, cpu in self._cpu.items()})


@dataclass(frozen=True, slots=True)
class StepRun:
    """One step as each request walks it, resolved when the pipeline starts: the tensors it
    reads and writes as (step's name, pipeline's name) pairs, and where its time and CPU go."""

    name: str
    model: str | None
    reads: tuple[tuple[str, str], ...]
    writes: tuple[tuple[str, str], ...]
    wanted: list[str] | None  # a model step's outputs to ask for; None: all it has
    processor: ProcessorStep | None
    cpu: StepCpu | None
    times: StepTimes

    @classmethod
    def of(cls, step: StepConfig, types: StepTypes, processor: ProcessorStep | None,
           cpu: StepCpu | None, times: StepTimes) -> StepRun:
        # A model step that reads every output of its model asks for none by name: the engine
        # then looks none up and filters nothing
        every = (step.model is not None and types.outputs is not None
                 and set(step.outputs) == set(types.outputs))
        return cls(step.name, step.model, tuple(step.inputs.items()),
                   tuple(step.outputs.items()), None if every else list(step.outputs),
                   processor, cpu, times)


def named(error: SurgeError, step: str) -> SurgeError:
    """The same error (same kind, same status) with the step's name in front of its message."""
    renamed = copy.copy(error)
    renamed.args = (f"step {step!r}: {error}",)
    return renamed


class ServedPipeline:
    """A pipeline being served: its plan, its processors, its statistics."""

    version = 1
    versions = (1,)

    def __init__(self, host: PipelineHost, name: str, config: ModelConfig) -> None:
        self.name, self.config, self._host = name, config, host
        self.steps = plan(name, config, host.repository.model_names())
        self.signature = pipeline_signature(config)
        self._accept = Accept(self.signature)
        self._output_names = tuple(self.signature.output_names)
        self._models = tuple(sorted({s.model for s in self.steps if s.model is not None}))
        self.processors: dict[str, ProcessorStep] = {}
        self.handle: ModelHandle | None = None
        self.accepting = False
        self._metrics = step_metrics(host.metrics)
        totals = self._metrics.totals
        self._cpu = {s.name: totals.step_cpu(name, s.name) for s in self.steps if s.model is None}
        self.counters = PipelineCounters(self._cpu)
        self._times = {s.name: totals.step_times(name, s.name) for s in self.steps}
        # What each request walks, resolved at start (see `_run`).
        self._runs: tuple[StepRun, ...] = ()
        # The host's clock, read through the host until start resolves it (the loop's own)
        self._clock: Clock = lambda: self._host.clock()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def models(self) -> tuple[str, ...]:
        """The models its steps name."""
        return self._models

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Serve the model steps (loading those not served yet), then check every step's types."""
        await asyncio.to_thread(check_step_models, self.name, self.config,
                                self._host.repository.kind_of)
        await asyncio.gather(*(self._host.ensure_served(m) for m in self._models))
        types: dict[str, StepTypes] = {}
        for step in self.steps:
            if step.model is not None:
                types[step.name] = self._model_types(step.name, step.model)
            else:
                base = await asyncio.to_thread(self._params_source, step.params_from)
                self.processors[step.name] = processor_step(self.name, step, base)
                types[step.name] = self.processors[step.name].types
        check_types(self.name, self.steps, types, self.signature.inputs, self.signature.outputs)
        self._runs = tuple(StepRun.of(step, types[step.name], self.processors.get(step.name),
                                      self._cpu.get(step.name), self._times[step.name])
                           for step in self.steps)
        self.handle = ModelHandle(self.name, self.version, self.versions, self.config,
                                  self.signature, PLATFORM)
        self._clock = self._host.clock
        self.accepting = True

    def _model_types(self, step: str, model: str) -> StepTypes:
        handle = self._host.model(model)
        if handle.platform == PLATFORM:
            raise ConfigError(f"pipeline {self.name!r}, step {step!r}: {model!r} is a pipeline; "
                              "a step names a model")
        signature = handle.signature
        return StepTypes({s.name: s for s in signature.inputs},
                         {s.name: s for s in signature.outputs})

    def _params_source(self, model: str | None) -> ModelConfig:
        return self.config if model is None else self._host.repository.config(model)

    @property
    def ready(self) -> bool:
        return self.accepting and all(self._host.model_ready(m) for m in self._models)

    def unready_reason(self) -> str:
        """Why an accepting pipeline is not ready: the models of its steps that are not."""
        waiting = [m for m in self._models if not self._host.model_ready(m)]
        if not waiting:
            return ""
        if len(waiting) == 1:
            return f"its step model {waiting[0]!r} is not ready"
        return f"its step models {', '.join(map(repr, waiting))} are not ready"

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; let requests in flight finish within `grace_s`."""
        self.accepting = False
        if self._inflight:
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.warning("pipeline %s stopped with %d requests in flight", self.name,
                            self._inflight)
        self._metrics.share()  # several front ends: its last figures before the process ends

    def instances_note(self) -> str:
        return ""

    # -- requests ----------------------------------------------------------------------------
    def make_request(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None,
                     priority: int, timeout_us: int | None, request_id: str) -> PipelineRequest:
        """Validate against the pipeline's signature."""
        self._accept.check(inputs)
        for name in outputs or []:
            self.signature.output(name)
        priority_level(priority)  # the Python API passes the caller's value as it is
        if not self._models:  # no model step to check a pin: none but the original is served
            check_pin(request_route.get(), (ORIGINAL,))
        if timeout_us is not None and timeout_us < 0:
            raise InputError(f"timeout must be >= 0 microseconds, got {timeout_us}")
        rows = next(iter(inputs.values())).shape[0] if self.signature.batched else 1
        if rows < 1:
            raise InputError(f"batch size must be at least 1, got {rows}")
        now = self._clock()
        return PipelineRequest(inputs, tuple(outputs) if outputs is not None else None,
                               rows, now, now + timeout_us / 1e6 if timeout_us else None,
                               priority, request_id)

    async def infer(self, request: PipelineRequest) -> dict[str, np.ndarray]:
        if not self.accepting:
            raise ModelNotReadyError(f"pipeline {self.name!r} is not accepting requests")
        if (route := request_route.get()) is not None:
            route.version = self.version  # before its steps' models fill in theirs
        self._inflight += 1
        self._idle.clear()
        started = time.perf_counter_ns()
        try:
            tensors = await self._run(request)
        except BaseException:
            self.counters.fail.add(time.perf_counter_ns() - started)
            raise
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        elapsed = time.perf_counter_ns() - started
        self._count_success(request.rows, elapsed)
        wanted = request.outputs or self._output_names
        return {name: tensors[name] for name in wanted}

    def _count_success(self, rows: int, elapsed_ns: int) -> None:
        counters = self.counters
        counters.success.add(elapsed_ns)
        counters.compute_infer.add(elapsed_ns)
        counters.inference_count += rows
        counters.execution_count += 1
        counters.last_inference = int(time.time() * 1e3)

    async def _run(self, request: PipelineRequest) -> dict[str, np.ndarray]:
        tensors = dict(request.inputs)
        rows = request.rows if self.signature.batched else None  # unbatched: no row count
        timing = request_timing.get()  # the front end's, when it logs or traces the request
        for step in self._runs:
            inputs = {own: tensors[tensor] for own, tensor in step.reads}
            started = time.perf_counter()
            processor = step.processor
            try:
                if processor is None:
                    produced = await self._model_step(step, inputs, request, timing)
                elif processor.runs_here(inputs):  # no coroutine for a call on the loop
                    produced = processor.run_here(inputs, rows, step.cpu)
                else:
                    produced = await processor.run_in_thread(inputs, rows, step.cpu)
            except Exception as exc:
                raise self._failed(step.name, exc, step.model is not None) from None
            step.times.observe(time.perf_counter() - started)
            for own, tensor in step.writes:
                tensors[tensor] = produced[own]
        return tensors

    async def _model_step(self, step: StepRun, inputs: dict[str, np.ndarray],
                          request: PipelineRequest, timing: RequestTiming | None
                          ) -> dict[str, np.ndarray]:
        """Run a model step; its queue, batch and compute go into a timing of its own (they
        overwrote one another in the request's, leaving only the last step's)."""
        assert step.model is not None
        token = request_timing.set(timing.step(step.name)) if timing is not None else None
        try:
            return await self._host.infer(
                step.model, None, inputs, outputs=step.wanted, priority=request.priority,
                timeout_us=None if request.deadline is None else self._remaining_us(request),
                request_id=request.request_id)
        finally:
            if token is not None:
                request_timing.reset(token)

    def _failed(self, step: str, exc: Exception, model_step: bool = False) -> SurgeError:
        """The error a failed step fails its request with: its own, or a ServingError, named."""
        self._metrics.failures.labels(self.name, step).inc()
        if model_step and isinstance(exc, NotFoundError):
            # Every step's model is in the repository (checked at load): one not found was
            # unloaded meanwhile, which the pipeline's client can only wait out.
            exc = ModelNotReadyError(str(exc))
        if isinstance(exc, SurgeError):
            return named(exc, step)
        log.exception("pipeline %s: step %s failed", self.name, step, exc_info=exc)
        return ServingError(f"step {step!r} failed: {type(exc).__name__}: {exc}")

    def _remaining_us(self, request: PipelineRequest) -> int | None:
        if request.deadline is None:
            return None
        left = request.deadline - self._clock()
        if left <= 0:
            raise DeadlineExceededError(
                f"deadline exceeded after {(self._clock() - request.arrival) * 1e3:.1f} ms")
        return max(1, int(left * 1e6))

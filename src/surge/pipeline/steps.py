"""Processor steps: a processor bound to its params, run on a request's rows in the processor threads.

Processors run in a thread pool of the front-end process, not on its event loop and not in
worker processes. The built-in decoders and resizers (simplejpeg, Pillow) and numpy release the
GIL while they work, so threads compute in parallel with each other and with the loop
(benchmarks/pipelines.py measures it), and a request's bytes are handed over without a copy;
worker processes would have to copy every payload through shared memory both ways (tensors are
never pickled). Processors declared `inline` (top-k labels, detection boxes: microseconds of
numpy on a request's rows) run on the loop itself: the hand-off to a thread and back costs more.
So do calls a processor's `inline_when` accepts (`image.decode` of small images): under load the
hand-off cost more CPU than decoding a 128x128 PNG (benchmarks/pipelines.py).

Each call's thread CPU time is measured where it runs (on the loop, or in the processor thread,
which hands its figure back with the result) and given to the step's `StepCpu`: what a step costs
inside a loaded server, where two cores shared with the workers make it dearer than alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from surge.errors import ConfigError, ServingError
from surge.pipeline.graph import StepTypes, check_types, declared, plan
from surge.pipeline.metrics import StepCpu
from surge.platform import available_cores
from surge.processors import Processor, ProcessorFn, resolve, step_params
from surge.repository.config import ModelConfig, StepConfig

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def processor_pool() -> ThreadPoolExecutor:
    """The front end's processor threads: one per available core, shared by every pipeline."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(2, available_cores()), "surge-processor")
        return _pool


class Ran(NamedTuple):
    """One processor call's outcome and the CPU time of the thread that ran it (a tuple: made
    for every step of every request)."""

    produced: Any
    error: Exception | None
    cpu_ns: int

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.produced


def timed(fn: ProcessorFn, inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> Ran:
    """Call a processor, timing its thread's CPU (a failed call costs CPU too)."""
    started = time.thread_time_ns()
    try:
        produced, error = fn(inputs, params), None
    except Exception as exc:
        produced, error = None, exc
    return Ran(produced, error, time.thread_time_ns() - started)


@dataclass(frozen=True)
class ProcessorStep:
    """One processor step, resolved: the function, its params, what it declares."""

    step: str
    processor: Processor
    params: Mapping[str, Any]
    types: StepTypes

    async def run(self, inputs: dict[str, np.ndarray], rows: int | None,
                  cpu: StepCpu | None = None) -> dict[str, np.ndarray]:
        """The step's outputs for a request's rows; its CPU time goes to `cpu`."""
        if self.runs_here(inputs):
            return self.run_here(inputs, rows, cpu)
        return await self.run_in_thread(inputs, rows, cpu)

    def runs_here(self, inputs: dict[str, np.ndarray]) -> bool:
        """Whether this call runs on the event loop (`run_here`) rather than in a thread."""
        return self.processor.runs_inline(inputs, self.params)

    def run_here(self, inputs: dict[str, np.ndarray], rows: int | None,
                 cpu: StepCpu | None = None) -> dict[str, np.ndarray]:
        """The call on the event loop itself: no coroutine, no hand-off."""
        return self._outputs(timed(self.processor.run, inputs, self.params), True, rows, cpu)

    async def run_in_thread(self, inputs: dict[str, np.ndarray], rows: int | None,
                            cpu: StepCpu | None = None) -> dict[str, np.ndarray]:
        """The call in a processor thread, awaited on the loop."""
        loop = asyncio.get_running_loop()
        ran = await loop.run_in_executor(processor_pool(), timed, self.processor.run, inputs,
                                         self.params)
        return self._outputs(ran, False, rows, cpu)

    def _outputs(self, ran: Ran, inline: bool, rows: int | None,
                 cpu: StepCpu | None) -> dict[str, np.ndarray]:
        if cpu is not None:
            cpu.add(ran.cpu_ns, inline)
        produced = ran.result()
        self._check(produced, rows)
        return produced

    def _check(self, produced: Any, rows: int | None) -> None:
        """A processor's result must hold every output the step maps, one row per request row
        (`rows` None: an unbatched pipeline, whose tensors' first dimension is no batch)."""
        if not isinstance(produced, dict):
            raise ServingError(f"processor {self.processor.name!r} returned "
                               f"{type(produced).__name__}, not a dict of arrays")
        for name in self.types.outputs or produced:
            array = produced.get(name)
            if not isinstance(array, np.ndarray):
                raise ServingError(f"processor {self.processor.name!r} returned no array "
                                   f"{name!r}")
            if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
                raise ServingError(f"processor {self.processor.name!r} returned {name!r} with "
                                   f"shape {list(array.shape)} for {rows} row(s)")


def processor_step(pipeline: str, step: StepConfig, source: ModelConfig) -> ProcessorStep:
    """Resolve a processor step; bad params or a missing processor name the step."""
    assert step.processor is not None
    where = f"pipeline {pipeline!r}, step {step.name!r}"
    try:
        processor = resolve(step.processor)
        params = step_params(step, source)
        spec = processor.describe(params) if processor.describe is not None else None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    types = StepTypes(None, None) if spec is None else StepTypes(spec.inputs, spec.outputs)
    return ProcessorStep(step.name, processor, params, types)


def check_config(pipeline: str, config: ModelConfig, models: Collection[str],
                 config_of: Callable[[str], ModelConfig]) -> tuple[StepConfig, ...]:
    """What a pipeline's config alone shows (`surge models`): its plan, each processor step
    resolved with its params, and the types of the tensors processor steps and the pipeline's
    own inputs and outputs pass each other (a model step's are checked when its model loads)."""
    steps = plan(pipeline, config, models)
    types = {step.name: StepTypes(None, None) if step.model is not None else processor_step(
        pipeline, step, config if step.params_from is None else config_of(step.params_from)
    ).types for step in steps}
    check_types(pipeline, steps, types, declared(config.inputs), declared(config.outputs))
    return steps

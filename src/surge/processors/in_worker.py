"""Processor steps a model's own workers run on each batch before the engine (`preprocess:`).

A model whose config lists preprocess steps is served with the steps' inputs: the front end
hands the worker each request's tensors as they came (JPEG/PNG files as V2 BYTES go through the
same shared memory as any tensor, and are smaller than the decoded images), and the worker runs
the steps on the whole batch, then the engine. Beside a pipeline whose decode step runs in the
front end, the front end decodes nothing, and the decoding runs where the model's instances
run, batch by batch, on as many processes as the model has instances.

A step that refuses its batch (InputError) is run again row by row to find the rows at fault,
then once on the rows it takes. The refused rows are filled with zeros for the engine and
reported (`RowsRejectedError`), so the front end fails only their requests, with the step's
error (HTTP 400), and answers the others.

`surge evaluate` and `optimize` load the model itself (its own tensors): the steps are part of
serving, and `surge tune` refuses such a model (`docs/tuning.md`). What the decode costs here
against the front end: `docs/applications/detector.md`; for short texts the front end's
tokenizer is faster (`docs/applications/embeddings.md`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from surge.errors import ConfigError, InputError
from surge.processors import Processor, resolve, step_params
from surge.repository.config import ModelConfig, StepConfig
from surge.repository.repository import LoadedModel
from surge.runtimes.base import RowsRejectedError, Runner, Signature, TensorSpec, WrappedRunner


@dataclass(frozen=True)
class BoundStep:
    """A preprocess step resolved: its processor, params, and the batch tensors it reads and
    writes as (processor's name, batch tensor) pairs."""

    name: str
    processor: Processor
    params: Mapping[str, Any]
    reads: tuple[tuple[str, str], ...]
    writes: tuple[tuple[str, str], ...]
    fixed: bool  # every output's shape past the batch dim is fixed: a batch may run in parts

    def error(self, exc: InputError) -> str:
        """The error of a one-row call, worded with the served input names it read and without
        the call's row 0 (the front end names the row within a request of several)."""
        text = str(exc)
        for own, tensor in self.reads:
            text = text.replace(f"input '{own}' row 0", f"input '{tensor}'")
            text = text.replace(f"input '{own}'", f"input '{tensor}'")
        return text


def serving_runner(loaded: LoadedModel, threads: int = 1) -> Runner:
    """The runner a worker serves: the model's, behind its preprocess steps if it has any
    (a batch's rows split over `threads` threads, the instance's own)."""
    if not loaded.config.preprocess:
        return loaded.runner
    return PreprocessedRunner(loaded.runner, loaded.config, threads)


def example_rows(config: ModelConfig, served: Signature, size: int) -> dict[str, np.ndarray]:
    """`size` valid rows of each input the preprocess steps read from requests, made from their
    processors' examples (a JPEG of the target size): what the latency probe sends.
    An input whose processor has no example is left out."""
    rows: dict[str, np.ndarray] = {}
    wanted = set(served.input_names)
    for step in config.preprocess:
        assert step.processor is not None  # the config checks it
        processor = resolve(step.processor)
        for own, tensor in step.inputs.items():
            if tensor in rows or tensor not in wanted or processor.example is None:
                continue
            example = processor.example(step_params(step, config)).get(own)
            if example is not None:
                rows[tensor] = np.repeat(example, size, axis=0)
        wanted -= set(step.outputs.values())  # read after this: made, not brought
    return rows


class Binder:
    """Walks the steps in order, tracking the tensors each makes, to bind them and find the
    served signature; ConfigError names the step and tensor at fault."""

    def __init__(self, model: Signature) -> None:
        self.model_inputs = {spec.name: spec for spec in model.inputs}
        self.served: dict[str, TensorSpec] = {}  # inputs the requests bring, first read first
        self.made: dict[str, TensorSpec] = {}  # tensors the steps so far wrote
        self.unread: dict[str, str] = {}  # written, not a model input, not read yet -> step

    def bind(self, config: ModelConfig, step: StepConfig) -> BoundStep:
        where = f"preprocess step {step.name!r}"
        assert step.processor is not None  # the config checks it
        processor = resolve(step.processor)
        if processor.describe is None:
            raise ConfigError(f"{where}: processor {step.processor!r} does not declare its "
                              "tensors (@declares), so the served inputs cannot be known")
        params = step_params(step, config)
        spec = processor.describe(params)
        for own, tensor in step.inputs.items():
            self._read(where, own, tensor, _declared(where, spec.inputs, own, "input"))
        for own, tensor in step.outputs.items():
            self._write(where, step.name, tensor, _declared(where, spec.outputs, own, "output"))
        fixed = all(-1 not in out.shape[1:] for out in spec.outputs.values())
        return BoundStep(step.name, processor, params, tuple(step.inputs.items()),
                         tuple(step.outputs.items()), fixed)

    def _read(self, where: str, own: str, tensor: str, want: TensorSpec) -> None:
        have = self.made.get(tensor, self.served.get(tensor))
        if have is None:
            self.served[tensor] = TensorSpec(tensor, want.datatype, want.shape)
        elif not want.fits(have):
            raise ConfigError(f"{where}: input {own!r} expects {want.datatype} "
                              f"{list(want.shape)}, {tensor!r} is {have.datatype} "
                              f"{list(have.shape)}")
        self.unread.pop(tensor, None)

    def _write(self, where: str, step: str, tensor: str, have: TensorSpec) -> None:
        want = self.model_inputs.get(tensor)
        if tensor in self.served and want is None:
            raise ConfigError(f"{where} writes {tensor!r}, an input the requests bring")
        if want is not None and not want.fits(have):
            raise ConfigError(f"{where} writes {have.datatype} {list(have.shape)} to the model "
                              f"input {tensor!r}, which takes {want.datatype} {list(want.shape)}")
        if want is None:
            self.unread[tensor] = step
        self.made[tensor] = have

    def signature(self, model: Signature) -> Signature:
        if self.unread:
            tensor, step = next(iter(self.unread.items()))
            raise ConfigError(f"preprocess step {step!r} writes {tensor!r}, which neither a "
                              f"later step nor the model reads (model inputs: "
                              f"{list(self.model_inputs)})")
        kept = tuple(s for s in model.inputs if s.name not in self.made)
        clash = [spec.name for spec in kept if spec.name in self.served]
        if clash:
            raise ConfigError(f"preprocess steps read {clash[0]!r} from requests, but no step "
                              "writes the model input of that name")
        return Signature(tuple(self.served.values()) + kept, model.outputs, model.batched,
                         model.max_batch_size, model.platform)


def _declared(where: str, specs: Mapping[str, TensorSpec], name: str, kind: str) -> TensorSpec:
    spec = specs.get(name)
    if spec is None:
        raise ConfigError(f"{where}: the processor has no {kind} {name!r} (its {kind}s: "
                          f"{list(specs)})")
    return spec


def bind_steps(config: ModelConfig, model: Signature) -> tuple[tuple[BoundStep, ...], Signature]:
    """The config's preprocess steps bound and checked against the model's inputs, and the
    signature served: the inputs the steps read from requests, then the model inputs no step
    writes."""
    binder = Binder(model)
    steps = tuple(binder.bind(config, step) for step in config.preprocess)
    return steps, binder.signature(model)


class PreprocessedRunner(WrappedRunner):
    """A model runner behind its preprocess steps (a `Runner`)."""

    def __init__(self, inner: Runner, config: ModelConfig, threads: int = 1) -> None:
        self._steps, signature = bind_steps(config, inner.signature)
        super().__init__(inner, signature)
        self._model_inputs = inner.signature.input_names
        self._parts = Parts(threads)
        self.preprocess_cpu_ns = 0  # the CPU the steps took on the last batch, all threads
        self.other_threads_cpu_ns = 0  # of which the part threads', not the caller's

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started, before = time.thread_time_ns(), self._parts.cpu_ns
        tensors = dict(inputs)
        refused: dict[int, str] = {}
        computed = all(_apply(step, tensors, refused, self._parts) for step in self._steps)
        self.other_threads_cpu_ns = self._parts.cpu_ns - before
        self.preprocess_cpu_ns = time.thread_time_ns() - started + self.other_threads_cpu_ns
        if not computed:  # a step refused every row: nothing left for the engine
            raise RowsRejectedError({}, tuple(sorted(refused.items())))
        outputs = self._inner.run({name: tensors[name] for name in self._model_inputs})
        if refused:
            raise RowsRejectedError(outputs, tuple(sorted(refused.items())))
        return outputs


class Parts:
    """A step's batch split over the instance's `threads`: the first part on the calling
    thread, the others at the same time on `threads - 1` more (the decoders release the GIL),
    so an instance of several engine threads decodes on as many cores as it computes on.
    Only steps whose outputs have a fixed width are split (token ids padded to the longest
    text of each part would not join)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool = (ThreadPoolExecutor(self.threads - 1, "surge-preprocess")
                      if self.threads > 1 else None)
        self.cpu_ns = 0  # the thread CPU of the parts run on the pool, all batches
        self._lock = threading.Lock()

    def run(self, step: BoundStep, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(given.values())))
        parts = min(rows, self.threads)
        if self._pool is None or parts < 2 or not step.fixed:
            return step.processor.run(given, step.params)
        bounds = np.linspace(0, rows, parts + 1).astype(int).tolist()
        pieces = [{k: v[a:b] for k, v in given.items()}
                  for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        others = [self._pool.submit(self._timed, step, piece) for piece in pieces[1:]]
        try:
            first = step.processor.run(pieces[0], step.params)
        finally:
            wait(others)
        results = [first] + [future.result() for future in others]  # a part's error raises
        return {name: np.concatenate([result[name] for result in results]) for name in first}

    def _timed(self, step: BoundStep, piece: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.thread_time_ns()
        try:
            return step.processor.run(piece, step.params)
        finally:
            with self._lock:
                self.cpu_ns += time.thread_time_ns() - started


def _apply(step: BoundStep, tensors: dict[str, np.ndarray], refused: dict[int, str],
           parts: Parts) -> bool:
    """Run `step` on the batch, writing its outputs into `tensors`; False when it refused every
    row. A refused batch is run row by row: the refused rows go into `refused`."""
    given = {own: tensors[tensor] for own, tensor in step.reads}
    try:
        produced = parts.run(step, given)
    except InputError:
        rows = _row_by_row(step, given, refused)
        if rows is None:
            return False
        produced = rows
    for own, tensor in step.writes:
        tensors[tensor] = produced[own]
    return True


def _row_by_row(step: BoundStep, given: dict[str, np.ndarray], refused: dict[int, str]
                ) -> dict[str, np.ndarray] | None:
    """The step's outputs with zeros in the rows it refuses, found a row at a time; the rows it
    takes are then run together, so outputs whose width follows the batch (token ids padded to
    its longest text) come out as the batch's. None when it refuses every row."""
    rows = len(next(iter(given.values())))
    good: list[int] = []
    for row in range(rows):
        try:
            step.processor.run({k: v[row:row + 1] for k, v in given.items()}, step.params)
            good.append(row)
        except InputError as exc:
            refused.setdefault(row, step.error(exc))
    if not good:
        return None
    try:
        taken = step.processor.run({k: v[good] for k, v in given.items()}, step.params)
    except InputError as exc:  # each row alone passes, together they do not: refuse them all
        for row in good:
            refused.setdefault(row, step.error(exc))
        return None
    outputs = {}
    for name, array in taken.items():
        outputs[name] = np.zeros((rows, *array.shape[1:]), array.dtype)
        outputs[name][good] = array
    return outputs

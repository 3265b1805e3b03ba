"""The Runner contract: one model variant in one engine, run on numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

from surge.datatypes import sent_datatype, v2_to_numpy
from surge.errors import InputError, SurgeError
from surge.runtimes.values import ValueRange, widened


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: V2 datatype and shape, -1 for a variable dimension.

    When the owning signature is batched, `shape` includes the batch dimension as its first
    element (always -1), as ONNX and Triton's V2 metadata show it. `values`: the range an
    input's values must lie in, as its config declares it (none: any value of the datatype).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: ValueRange | None = None

    def __post_init__(self) -> None:
        v2_to_numpy(self.datatype)
        if any(d < -1 for d in self.shape):
            raise SurgeError(f"tensor {self.name!r} has an invalid shape {list(self.shape)}")

    def describe(self) -> str:
        return f"{self.datatype} {list(self.shape)}"

    def matches_shape(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def fits(self, other: TensorSpec) -> bool:
        """Same datatype and rank, each dimension equal or variable on either side (one
        step's tensor read by another, a twin model's against the served one's)."""
        return self.datatype == other.datatype and shapes_fit(self.shape, other.shape)


def shapes_fit(want: Sequence[int], got: Sequence[int]) -> bool:
    """Same rank, each dimension equal or -1 (variable) on either side."""
    return len(want) == len(got) and all(
        -1 in (w, g) or w == g for w, g in zip(want, got, strict=True))


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a model. `batched` means dim 0 of every tensor is the batch dim."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool = True
    max_batch_size: int = 0  # 0: unlimited/unknown for a batched model; 0 for non-batched
    platform: str = field(default="", compare=False)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InputError(f"unknown input {name!r}; model inputs are {self.input_names}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise InputError(f"unknown output {name!r}; model outputs are {self.output_names}")

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def with_max_batch_size(self, max_batch_size: int) -> Signature:
        return replace(self, max_batch_size=max_batch_size)

    def check_input(self, name: str, array: np.ndarray) -> None:
        """Raise InputError unless `array` has input `name`'s datatype and shape, and its
        values lie in the input's declared range."""
        spec = self.input(name)
        # As sent: BF16 words are uint16 to numpy. Plain uint16 words fit a BF16 input (an
        # in-process caller has no other way to give them); BF16 ones no UINT16 input.
        try:
            sent = sent_datatype(array)
        except SurgeError:  # no V2 datatype: the caller's array (a try costs nothing in 3.11)
            raise InputError(_no_datatype(name, spec, array.dtype)) from None
        other_type = sent != spec.datatype and not (spec.datatype == "BF16" and sent == "UINT16")
        if other_type or not spec.matches_shape(tuple(array.shape)):
            raise InputError(f"input {name!r} expects {spec.describe()}, "
                             f"got {sent} {list(array.shape)}")
        if spec.values is not None:
            spec.values.check(name, widened(array, spec.datatype))

    def validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise InputError with a precise message if `inputs` does not fit this signature."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; model inputs are {self.input_names}")
        batch: int | None = None
        for name, array in inputs.items():
            self.check_input(name, array)
            if self.batched and array.ndim:
                if batch is None:
                    batch = array.shape[0]
                elif array.shape[0] != batch:
                    raise InputError(
                        f"input {name!r} has batch size {array.shape[0]}, other inputs {batch}"
                    )
        if self.batched and self.max_batch_size and batch is not None and (
            batch > self.max_batch_size
        ):
            raise InputError(f"batch size {batch} exceeds the model's max {self.max_batch_size}")


def _no_datatype(name: str, spec: TensorSpec, dtype: np.dtype) -> str:
    """Why input `name`'s dtype is refused: a byte order other than the native one (V2 tensors
    are native numbers; this check only looks, it copies nothing), or a dtype no V2 datatype
    has."""
    native = dtype.newbyteorder("=")
    if not dtype.isnative and native.kind in "biuf":
        return (f"input {name!r} expects {spec.describe()}, got {dtype.str} (byte-swapped): "
                f"send it in native byte order, e.g. array.astype({native.name!r})")
    return f"input {name!r} expects {spec.describe()}, got numpy dtype {dtype}, which no V2 " \
           "datatype has"


@runtime_checkable
class Runner(Protocol):
    """One model variant loaded in one engine."""

    @property
    def signature(self) -> Signature: ...

    @property
    def device(self) -> str:
        """Where the engine runs: 'cpu', 'cuda', 'cuda:0', ..."""
        ...

    def warmup(self) -> None: ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class Interruptible(Protocol):
    """An engine whose run under way another thread can make fail (ONNX Runtime's terminate
    flag): how an in-process instance gets its thread back from a hung batch, since a thread
    cannot be killed. Runs of one runner are sequential; `resume` lets the next one go on."""

    def interrupt(self) -> None: ...

    def resume(self) -> None: ...


def interruptible(runner: Runner) -> Interruptible | None:
    """The engine under `runner`'s wrappers, if its runs can be interrupted (else None)."""
    while isinstance(runner, WrappedRunner):
        runner = runner.inner
    return runner if isinstance(runner, Interruptible) else None


class WrappedRunner:
    """A runner in front of another with a signature of its own (`Runner`): the config's
    corrected signature, or the inputs a model's preprocess steps take. It runs `inner` as
    it is; a subclass changes `run`."""

    def __init__(self, inner: Runner, signature: Signature) -> None:
        self._inner = inner
        self._signature = signature

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def inner(self) -> Runner:
        return self._inner

    @property
    def device(self) -> str:
        return self._inner.device

    def warmup(self) -> None:
        self._inner.warmup()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._inner.run(inputs)


class RowsRejectedError(Exception):
    """Some rows of a batch were bad input (a preprocessing step refused them); the others were
    computed. `outputs` holds every row (the refused ones' rows are filler), or is empty when no
    row was left to compute; `rows` pairs each refused row of the batch with its error text.
    The front end answers the refused rows' requests with their error (HTTP 400) and the rest
    with their outputs, so one bad file does not fail the requests batched with it."""

    def __init__(self, outputs: dict[str, np.ndarray], rows: tuple[tuple[int, str], ...]) -> None:
        super().__init__(f"{len(rows)} row(s) refused: {rows[0][1] if rows else ''}")
        self.outputs = outputs
        self.rows = rows


class RowsRun(NamedTuple):
    """A batch as `run_rows` computed it."""

    outputs: dict[str, np.ndarray]
    rejected: tuple[tuple[int, str], ...]  # rows refused as bad input, with the error
    preprocess_cpu_ns: int  # the CPU the runner's preprocessing took, if it has any
    other_threads_cpu_ns: int  # of which on threads other than the caller's


def run_rows(runner: Runner, inputs: Mapping[str, np.ndarray]) -> RowsRun:
    """`runner.run(inputs)`, with the rows its preprocessing refused set apart (RowsRejectedError).
    A batch the runner refuses as bad input (InputError: an id past an embedding table, text
    ONNX cannot take) is searched for the rows that fail on their own (`_isolate`): those are
    refused and the others computed, so one poisoned row does not fail the requests batched
    with it. Any other error fails the batch at once (a broken model is not run row by row)."""
    rejected: tuple[tuple[int, str], ...] = ()
    try:
        outputs = runner.run(inputs)
    except RowsRejectedError as refused:
        outputs, rejected = refused.outputs, refused.rows
    except InputError as error:
        outputs, rejected = _isolate(runner, inputs, error)
    _check_output_rows(runner, inputs, outputs)
    return RowsRun(outputs, rejected, getattr(runner, "preprocess_cpu_ns", 0),
                   getattr(runner, "other_threads_cpu_ns", 0))


def _check_output_rows(runner: Runner, inputs: Mapping[str, np.ndarray],
                       outputs: Mapping[str, np.ndarray]) -> None:
    """A batched model answers one output row per input row; an output of another length
    cannot be split among the requests of a batch (each would get another's rows, or part of
    its own), so the batch fails as the model's error instead of answering wrongly."""
    rows = _batch_rows(runner, inputs)
    if rows is None:
        return
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise SurgeError(
                f"output {name!r} has shape {list(array.shape)} for a batch of {rows} rows: a "
                "model with max_batch_size above 0 must answer one row per input row (serve "
                "this one with max_batch_size: 0)")


def _batch_rows(runner: Runner, inputs: Mapping[str, np.ndarray]) -> int | None:
    """The rows of a batch of a batched model; None for a model without a batch dimension."""
    if not runner.signature.batched or not inputs:
        return None
    return int(next(iter(inputs.values())).shape[0])


_Failures = dict[int, tuple[str, bool]]  # batch row -> (error text, whether it is an InputError)


def _isolate(runner: Runner, inputs: Mapping[str, np.ndarray],
             error: Exception) -> tuple[dict[str, np.ndarray], tuple[tuple[int, str], ...]]:
    """The batch was refused as bad input: halve it until the rows that fail on their own are
    found, then compute the others in one run. A batch whose rows pass alone (it fails only as
    a whole), or whose every row fails alone with an error not of the input, fails."""
    rows = _batch_rows(runner, inputs)
    if rows is None or rows == 1:
        return {}, ((0, str(error)),)
    failed = (_failing_rows(runner, inputs, 0, rows // 2)
              | _failing_rows(runner, inputs, rows // 2, rows))
    refused = tuple((row, text) for row, (text, _) in sorted(failed.items()))
    if not failed or (len(failed) == rows and not all(bad for _, bad in failed.values())):
        raise error
    if len(failed) == rows:
        return {}, refused
    good = np.array([row for row in range(rows) if row not in failed])
    computed = runner.run({name: array[good] for name, array in inputs.items()})
    outputs = {}
    for name, array in computed.items():  # the refused rows' places hold filler (row 0 again)
        full = np.repeat(array[:1], rows, axis=0)
        full[good] = array
        outputs[name] = full
    return outputs, refused


def _failing_rows(runner: Runner, inputs: Mapping[str, np.ndarray], start: int,
                  stop: int) -> _Failures:
    """The rows in [start, stop) that fail when run without the others, by halving."""
    if stop <= start:
        return {}
    try:
        runner.run({name: array[start:stop] for name, array in inputs.items()})
    except RowsRejectedError as refused:
        return {start + row: (text, True) for row, text in refused.rows}
    except Exception as error:
        if stop - start == 1:
            bad = isinstance(error, InputError)
            text = str(error) if bad else f"the model fails on this row: {type(error).__name__}: {error}"
            return {start: (text, bad)}
        middle = (start + stop) // 2
        return (_failing_rows(runner, inputs, start, middle)
                | _failing_rows(runner, inputs, middle, stop))
    return {}


# How an engine's idle threads wait for work: True spins (lowest latency, a core each, always);
# False sleeps (frees the cores between operators and between batches); "run" spins while a
# batch computes and sleeps between batches (ONNX Runtime's force_spinning_stop; other engines
# sleep). See docs/serving-engine.md for what each costs.
SpinWait = bool | Literal["run"]


def openmp_wait_policy(spin_wait: SpinWait) -> str:
    """OMP_WAIT_POLICY for `spin_wait`: OpenMP cannot stop spinning when a run returns."""
    return "ACTIVE" if spin_wait is True else "PASSIVE"


@dataclass(frozen=True)
class RunnerOptions:
    """How an engine runs: threads and device. Engines ignore what they cannot use."""

    intra_op_threads: int = 0  # 0: engine default
    inter_op_threads: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    spin_wait: SpinWait = True  # see SpinWait


def example_inputs(signature: Signature, batch_size: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs that fit `signature` (variable non-batch dims become 1)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        dims = list(spec.shape)
        if signature.batched and dims:
            dims[0] = batch_size
        dims = [1 if d == -1 else d for d in dims]
        out[spec.name] = _example(spec, dims, rng)
    return out


def _example(spec: TensorSpec, dims: list[int], rng: np.random.Generator) -> np.ndarray:
    """Random values of `spec`'s datatype in `dims`, within its declared range."""
    dtype = v2_to_numpy(spec.datatype)
    if spec.datatype == "BYTES":
        return np.array([b"x"] * int(np.prod(dims)), dtype=object).reshape(dims)
    if dtype.kind == "b":
        return rng.integers(0, 2, dims).astype(bool)
    if dtype.kind == "f":
        array = rng.random(dims, dtype=np.float32).astype(dtype)
    else:
        array = rng.integers(0, 10, dims).astype(dtype)  # BF16: words of tiny numbers
    if spec.values is None or spec.datatype == "BF16":
        return array
    return spec.values.clip(array)

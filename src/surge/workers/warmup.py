"""An instance's warm-up samples (config.yaml `model_warmup`), run after it loads its model and
before it reports ready: worker processes (dedicated, shared groups, in-process threads) and
Ray actors alike, and again whenever an instance is restarted.

The samples go straight to the runner, not through the scheduler: they count in no statistics.
A sample that does not fit the model's signature, whose file cannot be read, or that the model
fails on, fails the instance's load with a ModelLoadError naming the sample.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from surge.datatypes import v2_to_numpy
from surge.errors import ModelLoadError
from surge.repository.warmup import (
    MAX_SAMPLE_BYTES,
    WARMUP_DIR,
    WarmupInput,
    WarmupSample,
    dims_problem,
)
from surge.runtimes.base import Runner, Signature, TensorSpec, example_inputs

if TYPE_CHECKING:
    from surge.repository.config import ModelConfig

_LENGTH = struct.Struct("<I")  # a BYTES element's length in a data file, as Triton writes it


def warm_up(runner: Runner, config: ModelConfig, model_dir: Path,
            samples: Sequence[WarmupSample] | None = None) -> None:
    """Run each warm-up sample (`samples`, else `config`'s) `count` times on `runner`, in
    order."""
    states = config.sequence_batching.state_inputs() if config.sequence_batching else set()
    for sample in config.model_warmup if samples is None else samples:
        try:
            inputs = sample_inputs(sample, runner.signature, model_dir, states)
        except (ValueError, MemoryError) as exc:
            raise ModelLoadError(f"model_warmup sample {sample.name!r}: {_why(exc)}") from None
        for _ in range(sample.count):
            try:
                runner.run(inputs)
            except Exception as exc:  # any failure of the model on its own sample fails the load
                raise ModelLoadError(f"model_warmup sample {sample.name!r} failed: "
                                     f"{type(exc).__name__}: {exc}") from None


def _why(exc: ValueError | MemoryError) -> str:
    """Why a sample's batch could not be made: a ValueError says it; a MemoryError (numpy's
    names the array, Python's is often empty) is named as what it is."""
    if isinstance(exc, MemoryError):
        return f"no memory for its batch (MemoryError: {exc}); lower its batch_size or dims"
    return str(exc)


def sample_inputs(sample: WarmupSample, signature: Signature, model_dir: Path,
                  states: Collection[str] = ()) -> dict[str, np.ndarray]:
    """The batch `sample` describes, checked against `signature`; ValueError saying why not.
    `states`: a sequence model's state inputs, which clients never send: one the sample leaves
    out starts at zeros, as a new sequence's state does (surge.engine.sequences)."""
    missing = [name for name in signature.input_names
               if name not in sample.inputs and name not in states]
    if missing:
        raise ValueError(f"gives no data for input {missing[0]!r} (model inputs: "
                         f"{list(signature.input_names)})")
    _check_batch_size(sample.batch_size, signature)
    batch: dict[str, np.ndarray] = {}
    for name, given in sample.inputs.items():
        if name not in signature.input_names:
            raise ValueError(f"names input {name!r}, which the model does not have (model "
                             f"inputs: {list(signature.input_names)})")
        spec = signature.input(name)
        _check_fits(name, given, spec, signature.batched)
        row = _row(given, spec, model_dir)
        batch[name] = _batched(row, sample.batch_size) if signature.batched else row
    for name in signature.input_names:
        if name not in batch:  # a state input the sample leaves out (checked above)
            batch[name] = _initial_state(signature.input(name), sample.batch_size,
                                         signature.batched)
    return batch


def _check_batch_size(batch_size: int, signature: Signature) -> None:
    if signature.batched and signature.max_batch_size and (
            batch_size > signature.max_batch_size):
        raise ValueError(f"batch_size {batch_size} is over the model's max_batch_size "
                         f"{signature.max_batch_size}")
    if not signature.batched and batch_size > 1:
        raise ValueError(f"batch_size {batch_size}: the model takes no batch dim, use 1")


def _initial_state(spec: TensorSpec, batch_size: int, batched: bool) -> np.ndarray:
    """Zeros for state input `spec`: each row's state as a new sequence starts it."""
    row = list(spec.shape[1:] if batched else spec.shape)
    if any(dim < 0 for dim in row):
        raise ValueError(f"state input {spec.name!r} has variable dims {row}: a sequence's "
                         "state needs fixed dims (declare them under `inputs`)")
    return np.zeros([batch_size, *row] if batched else row, v2_to_numpy(spec.datatype))


def _check_fits(name: str, given: WarmupInput, spec: TensorSpec, batched: bool) -> None:
    if given.datatype != spec.datatype:
        raise ValueError(f"input {name!r} is {spec.datatype}, not {given.datatype}")
    problem = dims_problem(given.dims, spec.shape, batched)
    if problem:
        raise ValueError(f"input {name!r}: {problem}")


def _batched(row: np.ndarray, batch_size: int) -> np.ndarray:
    """`batch_size` copies of `row` along a new batch dim."""
    return np.repeat(row[np.newaxis], batch_size, axis=0)


def _row(given: WarmupInput, spec: TensorSpec, model_dir: Path) -> np.ndarray:
    """One row of the input's data, shaped `given.dims`."""
    dims = tuple(given.dims)
    if given.input_data_file is not None:
        return read_row(model_dir, given.input_data_file, given.datatype, dims)
    if given.zero_data:
        if given.datatype == "BYTES":
            return np.full(dims, b"", dtype=object)
        return np.zeros(dims, v2_to_numpy(given.datatype))
    # Random values within the input's declared range, as the engine's own warm-up makes them.
    one = Signature((TensorSpec(spec.name, spec.datatype, dims, spec.values),), (), batched=False)
    return example_inputs(one)[spec.name]


def data_file(model_dir: Path, name: str) -> Path:
    """The regular file `name` in the model's warmup/ folder; ValueError when it is missing,
    not a regular file, or resolves outside the folder (a symlink out of it)."""
    try:
        folder = (model_dir / WARMUP_DIR).resolve()
        path = (folder / name).resolve()
        exists, regular = path.exists(), path.is_file()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        raise ValueError(f"input_data_file {name!r} cannot be read: {exc}") from None
    if folder not in path.parents:
        raise ValueError(f"input_data_file {name!r} resolves outside {WARMUP_DIR}/")
    if not regular:  # a FIFO would block the open, a directory cannot be read
        what = "is not a regular file" if exists else "does not exist"
        raise ValueError(f"input_data_file {name!r} {what} (looked for "
                         f"{model_dir.name}/{WARMUP_DIR}/{name})")
    return path


def read_row(model_dir: Path, name: str, datatype: str, dims: tuple[int, ...]) -> np.ndarray:
    """The row stored in data file `name`: raw little-endian values, or for BYTES each element's
    4-byte little-endian length and bytes; ValueError when its size does not match `dims`."""
    path = data_file(model_dir, name)
    elements = math.prod(dims)
    if datatype == "BYTES":
        # Only the file tells how long its elements are: bound it before it is read whole.
        return _bytes_row(name, _contents(path, name, MAX_SAMPLE_BYTES), elements).reshape(dims)
    dtype = v2_to_numpy(datatype).newbyteorder("<")
    data = _contents(path, name, elements * dtype.itemsize, exact=f"{datatype} {list(dims)}")
    if datatype == "BOOL" and data.translate(None, b"\0\1"):  # a byte left: neither 0 nor 1
        # numpy would take a byte of 2 as a true of byte 2, which engines may read otherwise
        # (requests are refused for it too, surge.protocol.tensors)
        raise ValueError(f"input_data_file {name!r} holds BOOL bytes other than 0 and 1")
    values = np.frombuffer(data, dtype).reshape(dims)
    return values.astype(v2_to_numpy(datatype))  # native order, and a copy that can be written


def _contents(path: Path, name: str, limit: int, exact: str = "") -> bytes:
    """The bytes of data file `path`: `limit` of them exactly when `exact` names what takes
    them, else at most `limit`; ValueError when the size is wrong or the file cannot be read."""
    try:
        size = path.stat().st_size
        if exact and size != limit:
            raise ValueError(f"input_data_file {name!r} holds {size} bytes; {exact} takes "
                             f"{limit}")
        if size > limit:
            raise ValueError(f"input_data_file {name!r} holds {size} bytes, over the {limit} "
                             "bytes a warm-up sample may take")
        return path.read_bytes()
    except OSError as exc:  # unreadable (permissions, I/O error) or gone since it was found
        raise ValueError(f"input_data_file {name!r} cannot be read: {exc.strerror or exc}"
                         ) from None


def _bytes_row(name: str, data: bytes, elements: int) -> np.ndarray:
    """`elements` length-prefixed byte strings that fill `data` exactly."""
    items: list[bytes] = []
    offset = 0
    while offset < len(data) and len(items) < elements:
        if offset + _LENGTH.size > len(data):
            break
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise ValueError(f"input_data_file {name!r}: element {len(items)} claims {length} "
                             f"bytes, past the end of the file")
        items.append(data[offset:offset + length])
        offset += length
    if len(items) != elements or offset != len(data):
        raise ValueError(f"input_data_file {name!r} holds {len(items)} BYTES elements"
                         f"{' and trailing bytes' if offset != len(data) else ''}; the dims "
                         f"take {elements} (each a 4-byte little-endian length, then its bytes)")
    array = np.empty(elements, dtype=object)
    array[:] = items
    return array

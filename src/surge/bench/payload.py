"""Request payloads for the load generator, built once before the run starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

import numpy as np
import orjson

from surge.datatypes import v2_to_numpy
from surge.errors import SurgeError
from surge.protocol.tensors import tensor_to_bytes, tensor_to_list


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


def specs_from_metadata(metadata: Mapping[str, Any]) -> list[InputSpec]:
    """Input specs from V2 model metadata (JSON form)."""
    try:
        return [InputSpec(i["name"], i["datatype"], tuple(int(d) for d in i["shape"]))
                for i in metadata["inputs"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SurgeError(f"model metadata has no usable 'inputs' ({exc})") from None


def _concrete(shape: tuple[int, ...], batch_size: int, batched: bool) -> list[int]:
    dims = list(shape)
    if batched and dims:
        dims[0] = batch_size
    return [1 if d == -1 else d for d in dims]


def dataset_inputs(dataset: str, specs: list[InputSpec], count: int,
                   strict: bool = False) -> dict[str, np.ndarray]:
    """The first `count` evaluation rows of a registered dataset (or .npz, ...) for the inputs
    it has; empty when its data is not at hand (the payloads are random then), or with
    `strict` an error naming the dataset."""
    from surge.tasks import DataOptions, get_dataset

    if not specs:
        return {}
    try:
        held_out = get_dataset(dataset).evaluation(specs[0].name, DataOptions())
    except (SurgeError, OSError, ValueError, KeyError, TypeError, BadZipFile) as exc:  # content
        if strict:
            raise SurgeError(f"--data {dataset!r}: cannot read its rows ({exc})") from None
        return {}
    return {name: array[:count] for name, array in held_out.inputs.items()}


def _require_rows(dataset: str, real: Mapping[str, np.ndarray], specs: list[InputSpec],
                  count: int, batched: bool) -> None:
    """Every input must come from `dataset` (or files): refuse one it cannot fill."""
    for spec in specs:
        rows = real.get(spec.name)
        if _fits(rows, spec, count, batched):
            continue
        if rows is None:
            why = f"has no input {spec.name!r}"
        elif len(rows) < count:
            why = f"has {len(rows)} rows of {spec.name!r}, fewer than the {count} needed"
        elif not _fits_shape(rows, spec, batched):
            why = (f"input {spec.name!r} has rows of shape {list(rows.shape[1:])}, not the "
                   f"model's {list(_row_shape(spec, batched))}")
        else:
            why = (f"input {spec.name!r} is {rows.dtype}, not the model's {spec.datatype}")
        raise SurgeError(f"--data {dataset!r} {why}; it cannot make this model's requests")


MAX_REQUEST_BYTES = 256 << 20  # one request's tensors: past this a batch is a mistake


def request_bytes(specs: list[InputSpec], batch_size: int, batched: bool) -> int:
    """About how many bytes one request's tensors take (BYTES inputs: 8 a row)."""
    total = 0
    for spec in specs:
        size = 8 if spec.datatype == "BYTES" else v2_to_numpy(spec.datatype).itemsize
        total += int(np.prod(_concrete(spec.shape, batch_size, batched), dtype=np.int64)) * size
    return total


MAX_FILES = 4096
MAX_FILES_BYTES = 4 << 30  # --files are held in memory, and again as the requests made of them


def read_files(folder: Path) -> list[bytes]:
    """The regular, visible files of `folder`, by name: each a row of a BYTES input."""
    if not folder.is_dir():
        raise SurgeError(f"--files {folder}: not a directory")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise SurgeError(f"--files {folder}: no files in it")
    if len(paths) > MAX_FILES:
        raise SurgeError(f"--files {folder}: {len(paths)} files, more than the {MAX_FILES} "
                         "a run sends; pick a smaller folder")
    _check_file_sizes(folder, paths)
    return [p.read_bytes() for p in paths]


def _check_file_sizes(folder: Path, paths: list[Path]) -> None:
    """Refuse, before reading them, files no request could carry or too many bytes to hold:
    reading them all ran the machine out of memory."""
    sizes = {path: path.stat().st_size for path in paths}
    largest = max(sizes, key=sizes.__getitem__)
    if sizes[largest] > MAX_REQUEST_BYTES:
        raise SurgeError(f"--files {folder}: {largest.name} has {sizes[largest] >> 20:,} MiB, "
                         f"more than the {MAX_REQUEST_BYTES >> 20} MiB one request may carry")
    total = sum(sizes.values())
    if total > MAX_FILES_BYTES:
        raise SurgeError(f"--files {folder}: {total >> 20:,} MiB in all, more than the "
                         f"{MAX_FILES_BYTES >> 20:,} MiB a run holds; pick fewer or smaller "
                         "files")


def _file_rows(files: Sequence[bytes], spec: InputSpec, count: int) -> np.ndarray | None:
    """`count` rows cycling through `files`, for a BYTES input."""
    if not files or spec.datatype != "BYTES":
        return None
    rows = np.empty(count, dtype=object)
    rows[:] = [files[i % len(files)] for i in range(count)]
    return rows


def sample_inputs(
    specs: list[InputSpec], *, batch_size: int = 1, batched: bool = True, variants: int = 16,
    seed: int = 0, dataset: str | None = None, files: Sequence[bytes] = (),
    strict_dataset: bool = False,
) -> list[dict[str, np.ndarray]]:
    """`variants` input sets that fit the specs: `files` one a row for BYTES inputs, rows of
    `dataset` where it has an input of the right datatype and enough rows, random values
    elsewhere (with `strict_dataset`, an input `dataset` cannot fill is an error)."""
    rng = np.random.default_rng(seed)
    count = variants * batch_size
    real = dataset_inputs(dataset, specs, count, strict_dataset) if dataset else {}
    for spec in specs:
        rows = _file_rows(files, spec, count)
        if rows is not None:
            real[spec.name] = rows
    if dataset and strict_dataset:
        _require_rows(dataset, real, specs, count, batched)
    sets: list[dict[str, np.ndarray]] = []
    for v in range(variants):
        inputs: dict[str, np.ndarray] = {}
        for spec in specs:
            dims = _concrete(spec.shape, batch_size, batched)
            rows = real.get(spec.name)
            if _fits(rows, spec, variants * batch_size, batched):
                assert rows is not None
                inputs[spec.name] = rows[v * batch_size:(v + 1) * batch_size].reshape(dims)
            else:
                inputs[spec.name] = _random(spec.datatype, dims, rng)
        sets.append(inputs)
    return sets


def _fits(rows: np.ndarray | None, spec: InputSpec, count: int, batched: bool = True) -> bool:
    if rows is None or len(rows) < count:
        return False
    if spec.datatype == "BYTES":  # files or texts, one per row (a pipeline's input)
        return rows.dtype == object
    return rows.dtype == v2_to_numpy(spec.datatype) and _fits_shape(rows, spec, batched)


def _row_shape(spec: InputSpec, batched: bool) -> tuple[int, ...]:
    """The shape of one row of `spec`'s input (-1: any size)."""
    return spec.shape[1:] if batched else spec.shape


def _fits_shape(rows: np.ndarray, spec: InputSpec, batched: bool) -> bool:
    """Each row has the model's shape: rows of another shape (even of as many values, which
    a reshape would take) are not this model's inputs."""
    want = _row_shape(spec, batched)
    have = rows.shape[1:]
    return len(have) == len(want) and all(w in (-1, h) for w, h in zip(want, have, strict=True))


def _random(datatype: str, dims: list[int], rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(int(np.prod(dims)), dtype=object)
        array[:] = [b"surge"] * array.size
        return array.reshape(dims)
    dtype = v2_to_numpy(datatype)
    if dtype.kind == "f":
        return rng.random(dims, dtype=np.float32).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, dims).astype(bool)
    return rng.integers(0, 10, dims).astype(dtype)


def http_body(inputs: Mapping[str, np.ndarray], specs: list[InputSpec],
              binary: bool) -> tuple[bytes, int | None]:
    """V2 infer request body (binary extension or pure JSON) and its header length."""
    entries = []
    chunks = []
    for spec in specs:
        array = inputs[spec.name]
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype,
                                 "shape": list(array.shape)}
        if binary:
            raw = tensor_to_bytes(array, spec.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor_to_list(array, spec.datatype)
        entries.append(entry)
    header: dict[str, Any] = {"inputs": entries}
    if binary:
        header["parameters"] = {"binary_data_output": True}
    head = orjson.dumps(header)
    if not binary:
        return head, None
    return head + b"".join(chunks), len(head)


def http_request(host: str, path: str, body: bytes, header_length: int | None,
                 headers: Mapping[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 keep-alive POST, ready to write to a socket as is."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    if header_length is None:
        lines.append("Content-Type: application/json")
    else:
        lines += ["Content-Type: application/octet-stream",
                  f"Inference-Header-Content-Length: {header_length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def grpc_request(model: str, inputs: Mapping[str, np.ndarray], specs: list[InputSpec]) -> bytes:
    """A serialized ModelInferRequest with raw_input_contents."""
    from surge.protocol.grpc_gen import grpc_service_pb2 as pb

    message = pb.ModelInferRequest(model_name=model)
    for spec in specs:
        array = inputs[spec.name]
        message.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        message.raw_input_contents.append(tensor_to_bytes(array, spec.datatype))
    return bytes(message.SerializeToString())

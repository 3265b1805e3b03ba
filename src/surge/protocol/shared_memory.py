"""The shared-memory extension's tensor side: where an input or output lies in a registered
region (`shared_memory_region`, `shared_memory_offset`, `shared_memory_byte_size`), reading an
input from it and writing an output into it. The regions themselves (registration, mapping,
sharing among front ends) are `surge.server.shared_memory`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from surge.datatypes import BF16_WORDS, v2_to_numpy
from surge.errors import InputError, ServingError, shown
from surge.protocol.tensors import serialize_bytes, tensor_from_bytes

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"


class SharedMemoryError(ServingError, InputError):
    """A request naming shared memory the server cannot use as asked (HTTP 400, counted as a
    bad request); `grpc_status` is the gRPC status code's name, as Triton answers."""

    status = 400
    grpc_status = "INVALID_ARGUMENT"


class RegionNotFoundError(SharedMemoryError):
    """No region of that name is registered (gRPC NOT_FOUND)."""

    grpc_status = "NOT_FOUND"


class RegionExistsError(SharedMemoryError):
    """A region of that name is registered already (gRPC ALREADY_EXISTS)."""

    grpc_status = "ALREADY_EXISTS"


class RemoteClientError(SharedMemoryError):
    """A registration from a client on another machine, which cannot share memory with the
    server (HTTP 403, gRPC PERMISSION_DENIED)."""

    status = 403
    grpc_status = "PERMISSION_DENIED"


class SharedMemoryUnsupportedError(SharedMemoryError):
    """What the server does not offer: CUDA shared memory, or any with `--shared-memory none`."""


@dataclass(frozen=True, slots=True)
class Region:
    """A registered region: `buffer` is its `byte_size` bytes, from `offset` of object `key`.
    The buffer keeps the mapping alive: a request holding it reads and writes mapped memory
    even after the region is unregistered (the mapping goes when the last holder does)."""

    name: str
    key: str
    offset: int
    byte_size: int
    buffer: memoryview

    def status(self) -> dict[str, object]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}


class Regions(Protocol):
    """The registered regions, as the codecs see them."""

    def get(self, name: str) -> Region:
        """The region `name`; RegionNotFoundError when none is registered."""
        ...


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a tensor lies: `byte_size` bytes from `offset` of the region."""

    region: Region
    offset: int
    byte_size: int

    @property
    def view(self) -> memoryview:
        return self.region.buffer[self.offset:self.offset + self.byte_size]


def placement(regions: Regions | None, what: str,
              params: Mapping[str, object]) -> Placement | None:
    """Where the parameters of `what` ("input 'x'", "output 'y'") place it; None when they do
    not name a region."""
    name = params.get(REGION)
    if name is None:
        if BYTE_SIZE in params or OFFSET in params:
            raise SharedMemoryError(f"{what}: {BYTE_SIZE} and {OFFSET} need {REGION}")
        return None
    if regions is None:
        raise SharedMemoryUnsupportedError(
            f"{what}: shared memory is off on this server (surge serve --shared-memory none)")
    if not isinstance(name, str) or not name:
        raise SharedMemoryError(f"{what}: {REGION} must be a region name, got {shown(name)}")
    if BYTE_SIZE not in params:
        raise SharedMemoryError(f"{what}: {REGION} needs {BYTE_SIZE}")
    size = byte_count(f"{what}: {BYTE_SIZE}", params[BYTE_SIZE])
    offset = byte_count(f"{what}: {OFFSET}", params.get(OFFSET, 0))
    region = regions.get(name)
    if offset + size > region.byte_size:
        raise SharedMemoryError(
            f"{what}: {OFFSET} {offset} + {BYTE_SIZE} {size} = {offset + size} is past the end "
            f"of shared memory region {name!r} ({region.byte_size} bytes)")
    return Placement(region, offset, size)


def byte_count(what: str, value: object) -> int:
    """An offset or a byte size (`what` names it): a non-negative integer, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SharedMemoryError(f"{what} must be a non-negative integer, got {shown(value)}")
    return value


def read_input(name: str, datatype: str, shape: tuple[int, ...], place: Placement) -> np.ndarray:
    """The input's array over the region's bytes, not a copy: the scheduler copies it into
    the worker's slot as it does the bytes of a binary body. Read-only, as an array over a
    body's bytes is: a step that would change it in place fails instead of writing into the
    client's memory. BYTES: length-prefixed elements filling `shared_memory_byte_size`
    exactly."""
    if datatype != "BYTES":
        dtype = BF16_WORDS if datatype == "BF16" else v2_to_numpy(datatype)
        expected = math.prod(shape) * dtype.itemsize
        if place.byte_size != expected:
            raise SharedMemoryError(
                f"input {name!r} expects {expected} bytes for {datatype} {list(shape)}, got "
                f"{BYTE_SIZE} {place.byte_size}")
    return tensor_from_bytes(name, datatype, shape, place.view.toreadonly())


def write_output(name: str, array: np.ndarray, datatype: str, place: Placement) -> int:
    """Copy the output into its place; returns its byte size. A place too small is refused
    naming the bytes needed, as Triton does, and nothing is written."""
    if datatype == "BYTES":
        raw: memoryview = memoryview(serialize_bytes(array))
    else:
        raw = memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B")  # type: ignore[arg-type]
    if raw.nbytes > place.byte_size:
        raise SharedMemoryError(
            f"output {name!r} needs {raw.nbytes} bytes, but its {BYTE_SIZE} is "
            f"{place.byte_size} (shared memory region {place.region.name!r})")
    place.view[:raw.nbytes] = raw
    return raw.nbytes


__all__ = ["BYTE_SIZE", "OFFSET", "REGION", "Placement", "Region", "RegionExistsError",
           "RegionNotFoundError", "Regions", "RemoteClientError", "SharedMemoryError",
           "SharedMemoryUnsupportedError", "byte_count", "placement", "read_input",
           "write_output"]

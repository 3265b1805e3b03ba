"""The shared-memory extension's endpoints: `/v2/systemsharedmemory/...` and
`/v2/cudasharedmemory/...` over HTTP, the six `*SharedMemory*` RPCs over gRPC. Both answer from
one `SharedMemoryRegistry` (None: `--shared-memory none`, every endpoint refused). CUDA shared
memory is not offered: its status lists no region and its register is refused."""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf import json_format

from surge.errors import NotFoundError
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.shared_memory import (
    RegionNotFoundError,
    SharedMemoryError,
    SharedMemoryUnsupportedError,
)
from surge.server.shared_memory import SharedMemoryRegistry, check_local_client

SYSTEM, CUDA = "systemsharedmemory", "cudasharedmemory"
ROOTS = (SYSTEM, CUDA)
CHANGES = ("register", "unregister")  # the actions that need the admin scope
NO_CUDA = "CUDA shared memory is not supported by this server: use system shared memory"
OFF = "shared memory is off on this server (surge serve --shared-memory none)"


def http_route(rest: list[str]) -> tuple[str, str, str]:
    """(kind, region name or "", action) of a path below /v2 (`rest[0]` is one of ROOTS)."""
    kind, tail = rest[0], rest[1:]
    # `region//unregister` names no region: not the unregister of every region
    if len(tail) == 3 and tail[0] == "region" and tail[1] and tail[2] in ("status", *CHANGES):
        return kind, tail[1], tail[2]
    if len(tail) == 1 and tail[0] in ("status", "unregister"):
        return kind, "", tail[0]
    raise NotFoundError(f"no route for /v2/{'/'.join(rest)}")


def http_answer(registry: SharedMemoryRegistry | None, method: str, rest: list[str],
                body: bytes, client: str) -> bytes:
    """The JSON body answering a shared-memory request from `client` (a gRPC-style peer,
    `surge.server.peers`; its errors raise)."""
    kind, name, action = http_route(rest)
    if (method == "GET") != (action == "status"):
        raise NotFoundError(f"no route for {method} /v2/{'/'.join(rest)}")
    if registry is None:
        raise SharedMemoryUnsupportedError(OFF)
    if kind == CUDA:
        return orjson.dumps(_cuda(name, action))
    if action == "status":
        return orjson.dumps(registry.status(name))
    if action == "unregister":
        registry.unregister(name)
        return b""
    check_local_client(client)
    fields = _register_body(body)
    registry.register(name, fields.get("key"), fields.get("offset", 0), fields.get("byte_size"),
                      client)
    return b""


def _register_body(body: bytes) -> dict[str, Any]:
    try:
        fields = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise SharedMemoryError(f"register request body is not valid JSON ({exc})") from None
    if not isinstance(fields, dict) or "key" not in fields or "byte_size" not in fields:
        raise SharedMemoryError('register request body must be a JSON object {"key": ..., '
                                '"offset": ..., "byte_size": ...}')
    return fields


def _cuda(name: str, action: str) -> list[Any]:
    if action == "register":
        raise SharedMemoryUnsupportedError(NO_CUDA)
    if action == "status" and name:
        raise RegionNotFoundError(f"Unable to find cuda shared memory region: {name!r}")
    return []


# -- gRPC ------------------------------------------------------------------------------------
def _registry(registry: SharedMemoryRegistry | None) -> SharedMemoryRegistry:
    if registry is None:
        raise SharedMemoryUnsupportedError(OFF)
    return registry


def system_status(registry: SharedMemoryRegistry | None, request: Any) -> Any:
    response = pb.SystemSharedMemoryStatusResponse()
    for entry in _registry(registry).status(request.name):
        region = response.regions[str(entry["name"])]
        json_format.ParseDict(entry, region)
    return response


def system_register(registry: SharedMemoryRegistry | None, request: Any, peer: str) -> Any:
    """A registration from gRPC peer `peer`."""
    _registry(registry)
    check_local_client(peer)
    _registry(registry).register(request.name, request.key, request.offset, request.byte_size,
                                 peer)
    return pb.SystemSharedMemoryRegisterResponse()


def system_unregister(registry: SharedMemoryRegistry | None, request: Any) -> Any:
    _registry(registry).unregister(request.name)
    return pb.SystemSharedMemoryUnregisterResponse()


def cuda_status(registry: SharedMemoryRegistry | None, request: Any) -> Any:
    _registry(registry)
    _cuda(request.name, "status")
    return pb.CudaSharedMemoryStatusResponse()


def cuda_register(registry: SharedMemoryRegistry | None, request: Any) -> Any:
    _registry(registry)
    raise SharedMemoryUnsupportedError(NO_CUDA)


def cuda_unregister(registry: SharedMemoryRegistry | None, request: Any) -> Any:
    _registry(registry)
    return pb.CudaSharedMemoryUnregisterResponse()


__all__ = ["CHANGES", "ROOTS", "cuda_register", "cuda_status", "cuda_unregister",
           "http_answer", "system_register", "system_status", "system_unregister"]

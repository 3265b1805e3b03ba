"""The shared-memory extension: the region registry (one front end, or several through a
directory), its checks, and the codecs reading inputs from and writing outputs into regions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from surge.errors import InputError
from surge.protocol.errors import grpc_code, http_error
from surge.protocol.grpc_codec import decode_infer_request, encode_infer_response
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.rest import decode_request, encode_response
from surge.protocol.shared_memory import (
    RegionExistsError,
    RegionNotFoundError,
    RemoteClientError,
    SharedMemoryError,
    SharedMemoryUnsupportedError,
    placement,
    read_input,
    write_output,
)
from surge.protocol.tensors import serialize_bytes
from surge.server.app import _scope_needed
from surge.server.keys import Scope
from surge.server.shared_memory import SharedMemoryRegistry
from surge.server.shared_memory_api import http_answer

LOCAL = "127.0.0.1"


@contextmanager
def shm_object(size: int) -> Iterator[shared_memory.SharedMemory]:
    """A POSIX shared-memory object of `size` zero bytes, as a client makes one."""
    memory = shared_memory.SharedMemory(create=True, size=size)
    memory.buf[:] = bytes(size)
    try:
        yield memory
    finally:
        memory.close()
        memory.unlink()


@pytest.fixture
def block() -> Iterator[shared_memory.SharedMemory]:
    with shm_object(256) as memory:
        yield memory


def key_of(memory: shared_memory.SharedMemory) -> str:
    return "/" + memory.name.lstrip("/")


@pytest.fixture
def registry(block: shared_memory.SharedMemory) -> SharedMemoryRegistry:
    regions = SharedMemoryRegistry()
    regions.register("r", key_of(block), 0, 256)
    return regions


def test_register_status_get_and_unregister(block: shared_memory.SharedMemory) -> None:
    regions = SharedMemoryRegistry()
    regions.register("a", key_of(block), 16, 64)
    assert regions.status() == [{"name": "a", "key": key_of(block), "offset": 16,
                                 "byte_size": 64}]
    block.buf[16:20] = b"abcd"
    assert bytes(regions.get("a").buffer[:4]) == b"abcd"
    with pytest.raises(RegionExistsError, match="'a' is already registered"):
        regions.register("a", key_of(block), 0, 8)
    regions.unregister("never-registered")  # no error, as in Triton
    regions.unregister("a")
    assert regions.status() == []
    with pytest.raises(RegionNotFoundError, match="Unable to find system shared memory "
                                                   "region: 'a'"):
        regions.get("a")


@pytest.mark.parametrize("key", ["name", "/a/b", "/..", "/.", "/", "//x", "/dev/../etc/passwd",
                                 7, None, "/" + "k" * 300])
def test_keys_that_are_paths_or_not_names_are_refused(key: object) -> None:
    with pytest.raises(SharedMemoryError, match="shared memory key must be '/name'"):
        SharedMemoryRegistry().register("a", key, 0, 8)


def test_a_key_naming_the_workers_own_memory_is_refused() -> None:
    with pytest.raises(SharedMemoryError, match="names memory of the server's own workers"):
        SharedMemoryRegistry().register("a", "/surge-123-0-abcd", 0, 8)


def test_a_key_that_does_not_exist_is_refused() -> None:
    with pytest.raises(SharedMemoryError, match="'/no-such-object' does not exist"):
        SharedMemoryRegistry().register("a", "/no-such-object", 0, 8)


@pytest.mark.parametrize(("offset", "size", "message"), [
    (-1, 8, "offset must be a non-negative integer, got -1"),
    (0, -8, "byte_size must be a non-negative integer, got -8"),
    (0, 8.0, "byte_size must be a non-negative integer, got 8.0"),
    (True, 8, "offset must be a non-negative integer, got True"),
    (0, 0, "byte_size must be above 0"),
    (200, 100, "offset 200 \\+ byte_size 100 = 300 is past the end of"),
    (0, 257, "is past the end of"),
])
def test_extents_outside_the_object_are_refused(block: shared_memory.SharedMemory,
                                                offset: object, size: object,
                                                message: str) -> None:
    with pytest.raises(SharedMemoryError, match=message):
        SharedMemoryRegistry().register("a", key_of(block), offset, size)


def test_front_ends_sharing_a_directory_see_each_others_registrations(
        tmp_path: Path, block: shared_memory.SharedMemory) -> None:
    first, second = SharedMemoryRegistry(tmp_path), SharedMemoryRegistry(tmp_path)
    first.register("a", key_of(block), 0, 32)
    block.buf[:3] = b"xyz"
    assert bytes(second.get("a").buffer[:3]) == b"xyz"
    assert second.status() == first.status() == [
        {"name": "a", "key": key_of(block), "offset": 0, "byte_size": 32}]
    with pytest.raises(RegionExistsError):
        second.register("a", key_of(block), 0, 8)
    second.unregister("a")
    with pytest.raises(RegionNotFoundError):
        first.get("a")
    second.register("a", key_of(block), 8, 16)  # the same name again: seen as the new region
    assert first.get("a").offset == 8
    first.unregister()
    assert second.status() == []
    assert not list(tmp_path.iterdir())


def test_an_unregistered_region_stays_mapped_while_a_request_holds_it(
        registry: SharedMemoryRegistry, block: shared_memory.SharedMemory) -> None:
    block.buf[:16] = np.arange(4, dtype=np.float32).tobytes()
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 16}
    source = placement(registry, "input 'x'", params)
    target = placement(registry, "output 'y'", {**params, "shared_memory_offset": 32})
    assert source is not None
    assert target is not None
    array = read_input("x", "FP32", (1, 4), source)
    registry.unregister()
    np.testing.assert_array_equal(array, [[0, 1, 2, 3]])
    assert write_output("y", array * 2, "FP32", target) == 16
    np.testing.assert_array_equal(np.frombuffer(block.buf[32:48], np.float32), [0, 2, 4, 6])


@pytest.mark.parametrize(("params", "message"), [
    ({"shared_memory_region": "r"}, "input 'x': shared_memory_region needs "
                                    "shared_memory_byte_size"),
    ({"shared_memory_byte_size": 16}, "shared_memory_byte_size and shared_memory_offset need "
                                      "shared_memory_region"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": "16"},
     "shared_memory_byte_size must be a non-negative integer, got '16'"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 16,
      "shared_memory_offset": -4}, "shared_memory_offset must be a non-negative integer"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 16,
      "shared_memory_offset": 250}, "shared_memory_offset 250 \\+ shared_memory_byte_size 16 = "
                                    "266 is past the end of shared memory region 'r' "
                                    "\\(256 bytes\\)"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 12},
     "input 'x' expects 16 bytes for FP32 \\[1, 4\\], got shared_memory_byte_size 12"),
])
def test_an_input_place_must_fit_its_region_and_its_tensor(
        registry: SharedMemoryRegistry, params: dict, message: str) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                        "parameters": params}]}
    with pytest.raises(SharedMemoryError, match=message):
        decode_request(json.dumps(body).encode(), None, registry)


def test_data_and_a_region_for_one_input_is_refused(registry: SharedMemoryRegistry) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0],
                        "parameters": {"shared_memory_region": "r",
                                       "shared_memory_byte_size": 4}}]}
    with pytest.raises(SharedMemoryError, match="also carries data: give one"):
        decode_request(json.dumps(body).encode(), None, registry)


def test_shared_memory_off_refuses_a_request_naming_a_region() -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                        "parameters": {"shared_memory_region": "r",
                                       "shared_memory_byte_size": 4}}]}
    with pytest.raises(SharedMemoryUnsupportedError, match="--shared-memory none"):
        decode_request(json.dumps(body).encode(), None, None)
    with pytest.raises(SharedMemoryUnsupportedError, match="shared memory is off"):
        http_answer(None, "GET", ["systemsharedmemory", "status"], b"", LOCAL)


def test_bytes_input_is_its_length_prefixed_serialization(
        registry: SharedMemoryRegistry, block: shared_memory.SharedMemory) -> None:
    raw = serialize_bytes(np.array([b"ab", b"cde"], dtype=object))
    block.buf[:len(raw)] = raw
    body = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {
        "shared_memory_region": "r", "shared_memory_byte_size": len(raw)}}]}
    assert list(decode_request(json.dumps(body).encode(), None, registry).inputs["s"]) == [
        b"ab", b"cde"]
    body["inputs"][0]["parameters"]["shared_memory_byte_size"] = len(raw) + 4
    with pytest.raises(InputError, match="expected 2 BYTES elements, got 3"):
        decode_request(json.dumps(body).encode(), None, registry)


def test_outputs_go_into_their_region_and_the_answer_carries_no_data(
        registry: SharedMemoryRegistry, block: shared_memory.SharedMemory) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
            "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r",
                                                    "shared_memory_byte_size": 64,
                                                    "shared_memory_offset": 8}},
                        {"name": "s", "parameters": {"binary_data": True}}]}
    request = decode_request(json.dumps(body).encode(), None, registry)
    outputs = {"y": np.array([[1.5, 2.5]], np.float32), "s": np.array([b"hi"], dtype=object)}
    payload, header_length = encode_response("m", 1, request, outputs)
    assert header_length is not None
    header = json.loads(payload[:header_length])
    # As from Triton: no data, and no parameters (tritonclient's C++ client reads an output's
    # parameters as the announcement of binary data).
    assert header["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [1, 2]}
    assert payload[header_length:] == serialize_bytes(outputs["s"])  # only s travels
    np.testing.assert_array_equal(np.frombuffer(block.buf[8:16], np.float32), [1.5, 2.5])


def test_an_output_region_too_small_names_the_bytes_needed(
        registry: SharedMemoryRegistry) -> None:
    place = placement(registry, "output 'y'", {"shared_memory_region": "r",
                                               "shared_memory_byte_size": 4})
    assert place is not None
    with pytest.raises(SharedMemoryError, match="output 'y' needs 8 bytes, but its "
                                                "shared_memory_byte_size is 4"):
        write_output("y", np.zeros(2, np.float32), "FP32", place)


def test_grpc_inputs_in_shared_memory_and_raw_contents_mix(
        registry: SharedMemoryRegistry, block: shared_memory.SharedMemory) -> None:
    block.buf[:12] = np.array([7, 8, 9], np.float32).tobytes()
    message = pb.ModelInferRequest(model_name="m")
    shared = message.inputs.add(name="a", datatype="FP32", shape=[3])
    shared.parameters["shared_memory_region"].string_param = "r"
    shared.parameters["shared_memory_byte_size"].int64_param = 12
    message.inputs.add(name="b", datatype="INT64", shape=[1])
    message.raw_input_contents.append(np.array([5], np.int64).tobytes())
    output = message.outputs.add(name="y")
    output.parameters["shared_memory_region"].string_param = "r"
    output.parameters["shared_memory_byte_size"].int64_param = 64
    output.parameters["shared_memory_offset"].int64_param = 64
    request = decode_infer_request(message, registry)
    np.testing.assert_array_equal(request.inputs["a"], [7, 8, 9])
    assert request.inputs["b"].tolist() == [5]
    response = encode_infer_response("m", 1, request, {"y": np.array([3, 4], np.int32)})
    assert list(response.raw_output_contents) == [b""]  # one entry per output, as Triton
    assert not response.outputs[0].parameters
    np.testing.assert_array_equal(np.frombuffer(block.buf[64:72], np.int32), [3, 4])


def test_grpc_codes_and_http_status_follow_triton() -> None:
    assert grpc_code(RegionNotFoundError("x")) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(RegionExistsError("x")) == grpc.StatusCode.ALREADY_EXISTS
    assert grpc_code(SharedMemoryError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    for error in (RegionNotFoundError("x"), RegionExistsError("x"), SharedMemoryError("x")):
        assert http_error(error)[0] == 400


def test_http_routes_and_cuda_refusal(registry: SharedMemoryRegistry) -> None:
    status = json.loads(http_answer(registry, "GET", ["systemsharedmemory", "region", "r",
                                                      "status"], b"", LOCAL))
    assert [entry["name"] for entry in status] == ["r"]
    assert http_answer(registry, "GET", ["cudasharedmemory", "status"], b"", LOCAL) == b"[]"
    with pytest.raises(SharedMemoryUnsupportedError, match="CUDA shared memory is not "
                                                          "supported by this server"):
        http_answer(registry, "POST", ["cudasharedmemory", "region", "g", "register"],
                    b'{"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 8}', LOCAL)
    with pytest.raises(SharedMemoryError, match="must be a JSON object"):
        http_answer(registry, "POST", ["systemsharedmemory", "region", "b", "register"],
                    b'{"offset": 0}', LOCAL)
    http_answer(registry, "POST", ["systemsharedmemory", "unregister"], b"", LOCAL)
    assert registry.status() == []


@pytest.mark.parametrize("client", ["127.0.0.1", "::1", "127.0.0.2", "::ffff:127.0.0.1",
                                    "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000",
                                    "ipv6:%5B::1%5D:5000", "ipv6:::1:5000", "unix:/tmp/s"])
def test_clients_on_this_machine_may_register(block: shared_memory.SharedMemory,
                                              client: str) -> None:
    registry = SharedMemoryRegistry()
    body = json.dumps({"key": key_of(block), "offset": 0, "byte_size": 64}).encode()
    http_answer(registry, "POST", ["systemsharedmemory", "region", "r", "register"], body,
                client)
    assert [entry["name"] for entry in registry.status()] == ["r"]


@pytest.mark.parametrize("client", ["10.0.0.5", "192.168.1.20", "2001:db8::1", "",
                                    "::ffff:10.0.0.5", "ipv4:10.0.0.5:5000",
                                    "ipv6:[2001:db8::1]:5000", "localhost"])
def test_clients_on_other_machines_may_not_register(block: shared_memory.SharedMemory,
                                                    client: str) -> None:
    """A remote client cannot share memory with the server, and a registration would let it
    read and write any shared-memory object of the server's user: 403 / PERMISSION_DENIED."""
    registry = SharedMemoryRegistry()
    body = json.dumps({"key": key_of(block), "offset": 0, "byte_size": 64}).encode()
    with pytest.raises(RemoteClientError, match="only by a client on this machine") as caught:
        http_answer(registry, "POST", ["systemsharedmemory", "region", "r", "register"], body,
                    client)
    assert http_error(caught.value)[0] == 403
    assert grpc_code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    assert registry.status() == []
    http_answer(registry, "GET", ["systemsharedmemory", "status"], b"", client)  # reads may


def test_registering_needs_the_admin_scope_and_status_only_read() -> None:
    assert _scope_needed("POST", ["systemsharedmemory", "region", "r", "register"]) \
        == Scope.ADMIN
    assert _scope_needed("POST", ["systemsharedmemory", "unregister"]) == Scope.ADMIN
    assert _scope_needed("POST", ["cudasharedmemory", "region", "r", "unregister"]) \
        == Scope.ADMIN
    assert _scope_needed("GET", ["systemsharedmemory", "status"]) == Scope.READ


def _over_http(app: Any, method: str, raw_path: bytes, body: bytes = b"") -> tuple[int, Any]:
    """One request through the ASGI app, its `path` decoded from `raw_path` as uvicorn does."""
    from urllib.parse import unquote

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": unquote(raw_path.decode("ascii")),
             "raw_path": raw_path, "headers": [], "client": ("127.0.0.1", 40000)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"] or b"null")


def test_a_region_name_is_read_from_its_own_url_segment(
        block: shared_memory.SharedMemory) -> None:
    """`%2F` in a region's name stays in the name; a name that is not UTF-8 is refused, not
    read as U+FFFD (where `%FF` and `%FE` would name one region)."""
    from surge.server.app import V2App
    from tests.unit.protocol.test_front_end_guards import FakeEngine

    app = V2App(FakeEngine(), shared_memory=SharedMemoryRegistry())
    key = json.dumps({"key": "/" + block.name.lstrip("/"), "byte_size": 16}).encode()
    assert _over_http(app, "POST", b"/v2/systemsharedmemory/region/a%2Fb/register", key)[0] == 200
    status, regions = _over_http(app, "GET", b"/v2/systemsharedmemory/region/a%2Fb/status")
    assert (status, [region["name"] for region in regions]) == (200, ["a/b"])
    status, answer = _over_http(app, "POST", b"/v2/systemsharedmemory/region/%FF/register", key)
    assert status == 400
    assert "not UTF-8" in answer["error"]
    assert _over_http(app, "GET", b"/v2/systemsharedmemory/status")[1] == regions

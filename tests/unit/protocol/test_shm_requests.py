"""Shared-memory requests the server must refuse rather than serve from memory it was not
given: an output in a region that also asks for binary data (Triton refuses it), and, with
several front ends, a region's object replaced under its key after the registration."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from surge.protocol.rest import decode_request, encode_response
from surge.protocol.shared_memory import SharedMemoryError
from surge.server.shared_memory import SharedMemoryRegistry


@pytest.fixture
def block() -> Iterator[shared_memory.SharedMemory]:
    memory = shared_memory.SharedMemory(create=True, size=64)
    try:
        yield memory
    finally:
        memory.close()
        memory.unlink()


def key_of(memory: shared_memory.SharedMemory) -> str:
    return "/" + memory.name.lstrip("/")


def _request(registry: SharedMemoryRegistry, **extra: object) -> bytes:
    place = {"shared_memory_region": "r", "shared_memory_byte_size": 8, **extra}
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                   "data": [1.0, 2.0]}],
                       "outputs": [{"name": "y", "parameters": place}]}).encode()


def test_an_output_in_shared_memory_that_asks_for_binary_data_is_refused(
        block: shared_memory.SharedMemory) -> None:
    """Before: accepted, the region taking precedence over the binary data asked for."""
    registry = SharedMemoryRegistry()
    registry.register("r", key_of(block), 0, 64)
    with pytest.raises(SharedMemoryError, match="output 'y' names shared memory region 'r' "
                                                "and asks for binary_data: give one"):
        decode_request(_request(registry, binary_data=True), None, registry)


def test_tritonclients_binary_data_false_with_a_region_is_served(
        block: shared_memory.SharedMemory) -> None:
    """What tritonclient's `set_shared_memory` sends; and `binary_data_output` of the whole
    request does not conflict with an output's region."""
    registry = SharedMemoryRegistry()
    registry.register("r", key_of(block), 0, 64)
    body = json.loads(_request(registry, binary_data=False))
    body["parameters"] = {"binary_data_output": True}
    request = decode_request(json.dumps(body).encode(), None, registry)
    payload, length = encode_response("m", 1, request, {"y": np.array([3, 4], np.float32)})
    assert length is None
    assert json.loads(payload)["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2]}]
    assert np.frombuffer(block.buf[:8], np.float32).tolist() == [3.0, 4.0]


def test_a_front_end_does_not_map_an_object_made_anew_under_a_registered_key(
        tmp_path: Path) -> None:
    """Front end 1 registers (checking the object's owner); the object is removed and another
    made under its key. Before: front end 2, mapping the region on first use, mapped the new
    object (whoever made it) and served from it; now it refuses."""
    first, second = SharedMemoryRegistry(tmp_path), SharedMemoryRegistry(tmp_path)
    original = shared_memory.SharedMemory(create=True, size=64)
    key = key_of(original)
    first.register("r", key, 0, 64)
    original.close()
    original.unlink()
    path = Path("/dev/shm") / key[1:]
    path.write_bytes(b"\x07" * 64)  # another object under the same name
    try:
        assert os.stat(path).st_size == 64
        with pytest.raises(SharedMemoryError, match="is no longer the object region 'r' was "
                                                    "registered with"):
            second.get("r")
        assert second.status() == first.status()  # still listed: unregister clears it
        second.unregister("r")
        second.register("r", key, 0, 64)  # registered again: the new object is served
        assert bytes(first.get("r").buffer[:2]) == b"\x07\x07"
    finally:
        path.unlink()


def test_a_front_end_maps_the_registered_object_of_another(
        tmp_path: Path, block: shared_memory.SharedMemory) -> None:
    first, second = SharedMemoryRegistry(tmp_path), SharedMemoryRegistry(tmp_path)
    first.register("r", key_of(block), 8, 16)
    block.buf[8:11] = b"abc"
    assert bytes(second.get("r").buffer[:3]) == b"abc"
    assert second.status("r") == [{"name": "r", "key": key_of(block), "offset": 8,
                                   "byte_size": 16}]

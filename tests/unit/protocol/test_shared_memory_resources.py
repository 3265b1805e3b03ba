"""What registered shared-memory regions cost the server, and that it gets it back: open
files, mappings, registrations past the limit, mappings that cannot be made; and the
registry's answers while other clients (or front ends) change it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from surge.errors import NotFoundError
from surge.protocol.shared_memory import SharedMemoryError, placement, read_input
from surge.server import shared_memory as registry_module
from surge.server.shared_memory import SHM_ROOT, SharedMemoryRegistry
from surge.server.shared_memory_api import http_answer
from tests.unit.protocol.test_shared_memory import LOCAL, key_of, shm_object


@pytest.fixture
def block() -> Iterator[shared_memory.SharedMemory]:
    with shm_object(8192) as memory:
        yield memory


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def mappings_of(memory: shared_memory.SharedMemory) -> int:
    with open("/proc/self/maps") as maps:
        return sum(memory.name.lstrip("/") in line for line in maps)


def test_registered_regions_hold_no_open_file(block: shared_memory.SharedMemory) -> None:
    """Python's mmap keeps a duplicate descriptor per mapping: 4,096 registrations would
    have held 4,096 open files, and at the process's limit the server accepts no connection."""
    registry = SharedMemoryRegistry()
    before = open_files()
    for index in range(64):
        registry.register(f"r{index}", key_of(block), 0, 4096)
    assert open_files() - before < 8
    held = mappings_of(block)
    registry.unregister()
    assert held >= 64
    assert mappings_of(block) == held - 64


def test_a_region_at_an_offset_maps_and_reads_from_there(
        block: shared_memory.SharedMemory) -> None:
    block.buf[5000:5016] = np.arange(4, dtype=np.float32).tobytes()
    registry = SharedMemoryRegistry()
    registry.register("r", key_of(block), 5000, 3000)
    region = registry.get("r")
    assert len(region.buffer) == 3000
    place = placement(registry, "input 'x'", {"shared_memory_region": "r",
                                              "shared_memory_byte_size": 16})
    assert place is not None
    np.testing.assert_array_equal(read_input("x", "FP32", (1, 4), place), [[0, 1, 2, 3]])
    region.buffer[16:20] = b"abcd"
    assert bytes(block.buf[5016:5020]) == b"abcd"


def test_an_input_read_from_a_region_cannot_be_changed_in_place(
        block: shared_memory.SharedMemory) -> None:
    """The array over a client's region was writable (an array over a request body's bytes is
    not): a step changing its input in place wrote into the client's memory."""
    block.buf[:16] = np.arange(4, dtype=np.float32).tobytes()
    registry = SharedMemoryRegistry()
    registry.register("r", key_of(block), 0, 64)
    place = placement(registry, "input 'x'", {"shared_memory_region": "r",
                                              "shared_memory_byte_size": 16})
    assert place is not None
    array = read_input("x", "FP32", (1, 4), place)
    with pytest.raises(ValueError, match="read-only"):
        array *= 2
    np.testing.assert_array_equal(np.frombuffer(block.buf[:16], np.float32), [0, 1, 2, 3])


def test_a_region_that_cannot_be_mapped_is_a_clear_error() -> None:
    """A sparse object of 1 PiB fits the file system but not the address space: the mapping
    fails (ENOMEM), which was an unhandled OSError (HTTP 500)."""
    path = SHM_ROOT / f"surge_test_huge_{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, 2**50)
        with pytest.raises(SharedMemoryError, match="cannot map shared memory region 'big'"):
            SharedMemoryRegistry().register("big", "/" + path.name, 0, 2**50)
    finally:
        os.close(fd)
        path.unlink()


def test_registrations_past_the_limit_are_refused(block: shared_memory.SharedMemory,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(registry_module, "MAX_REGIONS", 3, raising=False)
    for registry in (SharedMemoryRegistry(), SharedMemoryRegistry(tmp_path)):
        for index in range(3):
            registry.register(f"r{index}", key_of(block), 0, 64)
        with pytest.raises(SharedMemoryError, match="3 shared memory regions are registered"):
            registry.register("r3", key_of(block), 0, 64)
        registry.unregister("r0")
        registry.register("r3", key_of(block), 0, 64)
        registry.unregister()


def test_a_front_end_lets_go_of_regions_another_unregistered(
        tmp_path: Path, block: shared_memory.SharedMemory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Front end `second` mapped regions registered and unregistered through `first`: its
    mappings (and the object's memory, once the client removes it) went only when a request
    there named the same region again, so they grew with every registration."""
    monkeypatch.setattr(registry_module, "SWEEP_EVERY_S", 0.0, raising=False)
    first, second = SharedMemoryRegistry(tmp_path), SharedMemoryRegistry(tmp_path)
    for index in range(20):
        first.register(f"r{index}", key_of(block), 0, 4096)
        second.get(f"r{index}")
        first.unregister(f"r{index}")
    assert mappings_of(block) <= 2  # the test's own, and at most the last one `second` mapped
    first.register("last", key_of(block), 0, 64)
    second.get("last")
    first.unregister()
    second.status()
    assert mappings_of(block) == 1


def test_status_of_every_region_leaves_out_one_unregistered_meanwhile(
        tmp_path: Path, block: shared_memory.SharedMemory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Listed, then gone before its record is read: that was a NOT_FOUND for the whole
    status."""
    first, second = SharedMemoryRegistry(tmp_path), SharedMemoryRegistry(tmp_path)
    first.register("a", key_of(block), 0, 64)
    first.register("b", key_of(block), 0, 64)
    real_read, reads = Path.read_text, []

    def read_then_unregister(path: Path, *args: object, **kwargs: object) -> str:
        text = real_read(path, *args, **kwargs)  # type: ignore[arg-type]
        reads.append(path)
        if len(reads) == 2:  # both records read: "b" goes before the answer is made
            first.unregister("b")
        return text

    monkeypatch.setattr(Path, "read_text", read_then_unregister)
    assert [entry["name"] for entry in second.status()] in (["a"], ["a", "b"])


def test_status_of_a_region_whose_object_is_gone_answers_from_its_record(
        tmp_path: Path) -> None:
    """A client may remove the object once it is registered (the mapping keeps it): another
    front end's status of the region must not try to map it."""
    memory = shared_memory.SharedMemory(create=True, size=64)
    first, second = SharedMemoryRegistry(tmp_path), SharedMemoryRegistry(tmp_path)
    first.register("r", key_of(memory), 0, 64)
    memory.close()
    memory.unlink()
    assert second.status("r") == [{"name": "r", "key": key_of(memory), "offset": 0,
                                   "byte_size": 64}]
    first.unregister()


def test_an_empty_region_name_in_the_path_is_no_route(block: shared_memory.SharedMemory) -> None:
    """`/v2/systemsharedmemory/region//unregister` unregistered every region."""
    registry = SharedMemoryRegistry()
    registry.register("r", key_of(block), 0, 64)
    for method, action in (("POST", "unregister"), ("GET", "status"), ("POST", "register")):
        with pytest.raises(NotFoundError):
            http_answer(registry, method, ["systemsharedmemory", "region", "", action],
                        b"{}", LOCAL)
    assert [entry["name"] for entry in registry.status()] == ["r"]


def test_a_region_whose_object_was_shrunk_is_refused_not_read(
        block: shared_memory.SharedMemory) -> None:
    """The client cut its object below the region (tritonclient's create_shared_memory_region
    on the same key with a smaller size does): touching the mapping past the object's end
    stopped the server with SIGBUS."""
    registry = SharedMemoryRegistry()
    registry.register("r", key_of(block), 4096, 4096)
    registry.register("head", key_of(block), 0, 64)
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 16}
    os.truncate(SHM_ROOT / block.name.lstrip("/"), 4096)
    with pytest.raises(SharedMemoryError, match=f"shared memory key '{key_of(block)}' is now "
                                                "4096 bytes, shorter than region 'r'"):
        placement(registry, "input 'x'", params)
    assert placement(registry, "input 'x'", {**params, "shared_memory_region": "head"})
    assert [entry["name"] for entry in registry.status()] == ["r", "head"]
    os.truncate(SHM_ROOT / block.name.lstrip("/"), 8192)


def test_a_region_whose_object_was_removed_still_serves() -> None:
    """Removing the object leaves its memory to the mapping: nothing to refuse."""
    memory = shared_memory.SharedMemory(create=True, size=64)
    registry = SharedMemoryRegistry()
    registry.register("r", key_of(memory), 0, 64)
    memory.buf[:4] = b"abcd"
    memory.close()
    memory.unlink()
    place = placement(registry, "input 'x'", {"shared_memory_region": "r",
                                              "shared_memory_byte_size": 4})
    assert place is not None
    assert bytes(place.view) == b"abcd"

"""The system shared-memory extension through unmodified tritonclient (HTTP and gRPC) and
tritonclient.utils.shared_memory against a real `surge serve`; and `--shared-memory none`."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.integration.server.conftest import (
    ServerProcess,
    client_results,
    start_server,
)
from tests.integration.server.models import make_repository

pytestmark = pytest.mark.timeout(240)

X = np.array([[0.5, 1.5, -2.0, 3.25], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
N = np.array([[1, -2, 3], [40, 50, 60]], dtype=np.int64)


@pytest.fixture(scope="module")
def shared(server: ServerProcess) -> dict:
    return client_results("triton_shared_memory.py", server)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_and_outputs_in_shared_memory_compute_the_model(shared: dict,
                                                               protocol: str) -> None:
    out = shared[protocol]
    np.testing.assert_array_equal(np.array(out["y"], np.float32), X + 1)
    np.testing.assert_array_equal(np.array(out["m"]), N * 2)


def test_http_answer_carries_no_data_for_outputs_in_shared_memory(shared: dict) -> None:
    outputs = {o["name"]: o for o in shared["http"]["response"]["outputs"]}
    assert outputs == {"y": {"name": "y", "datatype": "FP32", "shape": [2, 4]},
                       "m": {"name": "m", "datatype": "INT64", "shape": [2, 3]}}


def test_grpc_answer_has_an_empty_raw_contents_entry_per_output(shared: dict) -> None:
    response = shared["grpc"]["response"]
    assert response["raw"] == [0, 0]
    assert [o["name"] for o in response["outputs"]] == ["y", "m"]
    assert not any("parameters" in o for o in response["outputs"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_status_lists_the_regions_and_unregister_clears_them(shared: dict,
                                                             protocol: str) -> None:
    out = shared[protocol]
    status = out["status"]
    assert [entry["name"] for entry in status] == ["out", "x_in"]
    sizes = [int(entry.get("byte_size", entry.get("byteSize"))) for entry in status]
    assert sizes == [128, 32]
    assert all(entry["key"].startswith(f"/surge_test_{protocol}_") for entry in status)
    assert out["status_after"] == []
    assert out["cuda_status"] in ("[]", "")


ERRORS = {
    "unknown_region": ("Unable to find system shared memory region: 'nope'", "NOT_FOUND"),
    "wrong_byte_size": ("input 'x' expects 32 bytes for FP32 [2, 4], got "
                        "shared_memory_byte_size 28", "INVALID_ARGUMENT"),
    "output_too_small": ("output 'y' needs 32 bytes, but its shared_memory_byte_size is 16",
                         "INVALID_ARGUMENT"),
    "past_region": ("shared_memory_offset 0 + shared_memory_byte_size 200 = 200 is past the "
                    "end of shared memory region 'out' (128 bytes)", "INVALID_ARGUMENT"),
    "registered_twice": ("shared memory region 'x_in' is already registered",
                         "ALREADY_EXISTS"),
    "missing_key": ("shared memory key '/surge_no_such_key' does not exist",
                    "INVALID_ARGUMENT"),
    "path_key": ("shared memory key must be '/name'", "INVALID_ARGUMENT"),
    "too_large": ("offset 0 + byte_size 33 = 33 is past the end of", "INVALID_ARGUMENT"),
    "status_unknown": ("Unable to find system shared memory region: 'nope'", "NOT_FOUND"),
    "cuda_register": ("CUDA shared memory is not supported by this server",
                      "INVALID_ARGUMENT"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_each_misuse_gets_its_error(shared: dict, protocol: str, case: str) -> None:
    status, _, message = shared[protocol]["errors"][case].partition("|")
    text, code = ERRORS[case]
    assert text in message
    assert status == ("400" if protocol == "http" else f"StatusCode.{code}")


def test_registering_needs_an_admin_key(server: ServerProcess) -> None:
    """Without the key, or at all: 401 before the body is read (scopes: unit tests)."""
    answer = httpx.post(f"{server.http}/v2/systemsharedmemory/region/r/register",
                        json={"key": "/k", "offset": 0, "byte_size": 8}, timeout=10)
    assert answer.status_code == 401


def test_grpcio_listener_serves_the_shared_memory_rpcs(tiny_repo: Path, tmp_path: Path) -> None:
    """`--grpc-server grpcio` routes the same RPCs (grpc core's server, not Surge's HTTP/2)."""
    served = start_server(tiny_repo, tmp_path / "server.log", "--grpc-server", "grpcio")
    try:
        out = client_results("triton_shared_memory.py", served, key="")["grpc"]
    finally:
        assert served.stop() == 0, served.output()
    np.testing.assert_array_equal(np.array(out["y"], np.float32), X + 1)
    assert out["errors"]["unknown_region"].startswith("StatusCode.NOT_FOUND|")
    assert out["status_after"] == []


def test_a_region_unregistered_during_a_request_serves_it_to_the_end(
        tmp_path: Path) -> None:
    """The request computes for 300 ms; the region is unregistered 100 ms in: the answer still
    reads its input from the region and writes its output there; the next request is refused."""
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing import shared_memory

    repo = make_repository(tmp_path / "repo", slow_delay_ms=300.0, with_tiny=False)
    served = start_server(repo, tmp_path / "server.log")
    block = shared_memory.SharedMemory(create=True, size=32)
    place = {"shared_memory_region": "r", "shared_memory_byte_size": 16}
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": place}],
            "outputs": [{"name": "output",
                         "parameters": {**place, "shared_memory_offset": 16}}]}
    try:
        block.buf[:16] = np.array([1, 2, 3, 4], np.float32).tobytes()
        httpx.post(f"{served.http}/v2/systemsharedmemory/region/r/register", timeout=10,
                   json={"key": "/" + block.name.lstrip("/"), "byte_size": 32}
                   ).raise_for_status()
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, f"{served.http}/v2/models/slow/infer", json=body,
                                 timeout=30)
            time.sleep(0.1)
            httpx.post(f"{served.http}/v2/systemsharedmemory/unregister",
                       timeout=10).raise_for_status()
            assert answer.result().status_code == 200, answer.result().text
        written = bytes(block.buf[16:32])
        after = httpx.post(f"{served.http}/v2/models/slow/infer", json=body, timeout=30)
    finally:
        block.close()
        block.unlink()
        assert served.stop() == 0, served.output()
    assert np.frombuffer(written, np.float32).tolist() == [2.0, 4.0, 6.0, 8.0]
    assert after.status_code == 400
    assert "Unable to find system shared memory region: 'r'" in after.json()["error"]


def test_shared_memory_none_refuses_the_endpoints(tiny_repo: Path, tmp_path: Path) -> None:
    served = start_server(tiny_repo, tmp_path / "server.log", "--shared-memory", "none")
    try:
        status = httpx.get(f"{served.http}/v2/systemsharedmemory/status", timeout=10)
        register = httpx.post(f"{served.http}/v2/systemsharedmemory/region/r/register",
                              json={"key": "/k", "offset": 0, "byte_size": 8}, timeout=10)
        extensions = httpx.get(f"{served.http}/v2", timeout=10).json()["extensions"]
    finally:
        assert served.stop() == 0, served.output()
    for answer in (status, register):
        assert answer.status_code == 400
        assert "shared memory is off" in answer.json()["error"]
    assert "system_shared_memory" not in extensions


def _register_as(uid: int, served: ServerProcess, name: str, key: str) -> tuple[int, bytes]:
    """A registration over a connection whose socket user `uid` holds (made under that
    effective uid, as another user's client would be)."""
    host, port = served.http.removeprefix("http://").rsplit(":", 1)
    os.seteuid(uid)
    try:
        sock = socket.create_connection((host, int(port)), timeout=10)
    finally:
        os.seteuid(0)
    body = json.dumps({"key": key, "offset": 0, "byte_size": 8}).encode()
    with sock:
        sock.sendall(b"POST /v2/systemsharedmemory/region/%s/register HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (name.encode(), len(body), body))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="connects as another user: needs root")
def test_a_registration_maps_only_objects_of_the_clients_user(tiny_repo: Path,
                                                              tmp_path: Path) -> None:
    objects = {"surge_test_theirs": 65534, "surge_test_others": 12345}
    for key, owner in objects.items():
        path = Path("/dev/shm") / key
        path.write_bytes(bytes(64))
        os.chown(path, owner, owner)
    served = start_server(tiny_repo, tmp_path / "server.log")
    try:
        theirs = _register_as(65534, served, "theirs", "/surge_test_theirs")
        others = _register_as(65534, served, "others", "/surge_test_others")
        by_root = _register_as(0, served, "by-root", "/surge_test_others")
    finally:
        assert served.stop() == 0, served.output()
        for key in objects:
            (Path("/dev/shm") / key).unlink(missing_ok=True)
    assert theirs[0] == 200, theirs
    assert others[0] == 403, others
    assert b"belongs to uid 12345, not to the registering client's user (uid 65534)" in others[1]
    assert by_root[0] == 200, by_root

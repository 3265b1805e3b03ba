"""The response cache with inputs and outputs in shared-memory regions, in a real `surge serve`:
a request over a region is keyed and computed on one copy of the region's bytes taken as it is
admitted, so it is cached as a request with the bytes in its body is, and a hit still writes
the answer into the output region the request names."""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing import shared_memory
from typing import Any

import httpx
import numpy as np
import pytest
from tests.integration.server.conftest import ServerProcess, start_server
from tests.integration.server.models import tiny_onnx

pytestmark = pytest.mark.timeout(240)

CONFIG = ("max_batch_size: 8\ninstances: 1\nthreads: 1\nbatching: {max_queue_delay_ms: 0}\n"
          "response_cache: true\n")
X = np.full((1, 4), 5.0, np.float32).tobytes()
N = np.array([[1, 2, 3]], np.int64).tobytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("cache-regions")
    tiny_onnx(root / "cached" / "1" / "model.onnx")
    (root / "cached" / "config.yaml").write_text(CONFIG)
    proc = start_server(root, tmp_path_factory.mktemp("log") / "server.log",
                        "--response-cache-bytes", "1MB")
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


@pytest.fixture
def region(served: ServerProcess) -> Iterator[shared_memory.SharedMemory]:
    block = shared_memory.SharedMemory(create=True, size=len(X) + len(N))
    block.buf[:len(X)] = X
    block.buf[len(X):] = N
    httpx.post(f"{served.http}/v2/systemsharedmemory/region/in/register", timeout=10,
               json={"key": "/" + block.name.lstrip("/"), "byte_size": len(X) + len(N)}
               ).raise_for_status()
    try:
        yield block
    finally:
        httpx.post(f"{served.http}/v2/systemsharedmemory/unregister", timeout=10)
        block.close()
        block.unlink()


def _in_region() -> dict[str, Any]:
    def place(offset: int, size: int) -> dict[str, Any]:
        return {"shared_memory_region": "in", "shared_memory_offset": offset,
                "shared_memory_byte_size": size}
    return {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": place(0, len(X))},
        {"name": "n", "datatype": "INT64", "shape": [1, 3],
         "parameters": place(len(X), len(N))}]}


def _in_json() -> dict[str, Any]:
    return {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [5.0] * 4},
        {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}


def _infer(served: ServerProcess, body: dict[str, Any]) -> list[float]:
    response = httpx.post(f"{served.http}/v2/models/cached/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    y: list[float] = response.json()["outputs"][0]["data"]
    return y


def _counts(served: ServerProcess) -> tuple[int, int]:
    """(execution_count, cache_hit count)."""
    stats = httpx.get(f"{served.http}/v2/models/cached/stats", timeout=30).json()
    entry = stats["model_stats"][0]
    return entry["execution_count"], entry["inference_stats"]["cache_hit"]["count"]


def test_a_request_over_a_region_is_stored_and_hits_like_one_with_its_bytes_in_the_body(
        served: ServerProcess, region: shared_memory.SharedMemory) -> None:
    start = _counts(served)
    assert _infer(served, _in_region()) == [6.0] * 4
    assert _infer(served, _in_region()) == [6.0] * 4
    assert _counts(served) == (start[0] + 1, start[1] + 1)  # stored, then hit
    assert _infer(served, _in_json()) == [6.0] * 4  # the same bytes in the body: a hit too
    assert _counts(served) == (start[0] + 1, start[1] + 2)


def test_a_rewritten_region_misses_and_a_hit_fills_the_output_region(
        served: ServerProcess, region: shared_memory.SharedMemory) -> None:
    out = shared_memory.SharedMemory(create=True, size=16)
    try:
        httpx.post(f"{served.http}/v2/systemsharedmemory/region/out/register", timeout=10,
                   json={"key": "/" + out.name.lstrip("/"), "byte_size": 16}).raise_for_status()
        region.buf[:len(X)] = np.full((1, 4), 9.0, np.float32).tobytes()
        start = _counts(served)
        assert _into_region(served, out) == [10.0] * 4  # new bytes: another key, computed
        assert _counts(served) == (start[0] + 1, start[1])
        out.buf[:16] = bytes(16)
        assert _into_region(served, out) == [10.0] * 4  # a hit, written into the region
        assert _counts(served) == (start[0] + 1, start[1] + 1)
    finally:
        httpx.post(f"{served.http}/v2/systemsharedmemory/region/out/unregister", timeout=10)
        out.close()
        out.unlink()


def _into_region(served: ServerProcess, out: shared_memory.SharedMemory) -> list[float]:
    """A request over the input region whose output y goes into region `out`: y as read there."""
    body = {**_in_region(), "outputs": [{"name": "y", "parameters": {
        "shared_memory_region": "out", "shared_memory_byte_size": 16}}]}
    response = httpx.post(f"{served.http}/v2/models/cached/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert "data" not in output  # written into the region instead, as Triton does
    y: list[float] = np.frombuffer(bytes(out.buf[:16]), np.float32).tolist()
    return y

"""`surge serve --model-control poll`: the repository index after a reload that failed names
the version that failed, as Triton's does, while the served version answers on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, start_server
from tests.integration.server.models import TINY_CONFIG, tiny_onnx

BROKEN = b"not an onnx model"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    tiny_onnx(root / "tiny" / "1" / "model.onnx")
    (root / "tiny" / "config.yaml").write_text(TINY_CONFIG)
    return root


@pytest.fixture
def polled(repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(repo, tmp_path / "server.log", "--model-control", "poll",
                          "--poll-interval", "0.2")
    yield server
    assert server.stop() == 0, server.output()[-3000:]


def _index(server: ServerProcess) -> list[dict[str, str]]:
    rows = httpx.post(f"{server.http}/v2/repository/index", json={}, timeout=30).json()
    return [row for row in rows if row["name"] == "tiny"]


def _wait_for(condition: Callable[[], bool], server: ServerProcess) -> None:
    deadline = time.monotonic() + 60.0
    while not condition():
        assert time.monotonic() < deadline, server.output()[-3000:]
        time.sleep(0.2)


def _failed_rows(server: ServerProcess) -> list[dict[str, str]]:
    return [row for row in _index(server) if row["state"] == "UNAVAILABLE"]


def _infers(server: ServerProcess, version: str) -> bool:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4},
                       {"name": "n", "shape": [1, 3], "datatype": "INT64", "data": [1] * 3}]}
    answer = httpx.post(f"{server.http}/v2/models/tiny/versions/{version}/infer", json=body,
                        timeout=30)
    return answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [2.0] * 4


def test_a_broken_new_version_is_the_failed_row_and_the_old_one_serves(
    repo: Path, polled: ServerProcess,
) -> None:
    (repo / "tiny" / "2").mkdir()
    (repo / "tiny" / "2" / "model.onnx").write_bytes(BROKEN)
    _wait_for(lambda: bool(_failed_rows(polled)), polled)
    (failed,) = _failed_rows(polled)
    assert failed["version"] == "2"
    assert "tiny/2/model.onnx" in failed["reason"]
    assert {"version": "1", "state": "READY"}.items() <= _index(polled)[0].items()
    assert _infers(polled, "1")


def test_a_served_version_broken_in_place_stays_ready_with_the_failure_in_its_row(
    repo: Path, tmp_path: Path,
) -> None:
    """Versions 1 and 2 on disk, 2 served (the latest): 2's file replaced by a broken one.
    Version 2 stays READY (as in Triton, a failed load leaves what serves as it was), its one
    row saying why the reload failed; no row for 2 beside it, nor for the older 1."""
    tiny_onnx(repo / "tiny" / "2" / "model.onnx")
    server = start_server(repo, tmp_path / "server.log", "--model-control", "poll",
                          "--poll-interval", "0.2")
    try:
        (repo / "tiny" / "2" / "model.onnx").write_bytes(BROKEN)
        _wait_for(lambda: "tiny/2/model.onnx" in _index(server)[0]["reason"], server)
        (row,) = _index(server)
        assert (row["version"], row["state"]) == ("2", "READY")
        assert "its last load failed, it serves on" in row["reason"]
        assert _infers(server, "2")  # the copy loaded before serves on
    finally:
        assert server.stop() == 0, server.output()[-3000:]

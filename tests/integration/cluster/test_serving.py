"""`surge serve --ray`: a model whose instances run only on the compute nodes of a local Ray
cluster answers tritonclient like ONNX Runtime in process, spreads its batches over both nodes,
shares the cluster with a second front end, and survives the loss of a node under load."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.integration.cluster.conftest import metric
from tests.integration.server.conftest import ServerProcess, start_server, triton_client

from surge.repository import Repository

pytestmark = pytest.mark.timeout(300)
CLIENTS = Path(__file__).resolve().parent / "clients"
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}


@pytest.fixture(scope="module")
def front(cluster_repo: Path, ray_cluster: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("front") / "a.log"
    server = start_server(cluster_repo, log, "--ray", ray_cluster.address)
    yield server
    assert server.stop() == 0, server.output()[-3000:]


def compute_node_ids(cluster: Any) -> set[str]:
    return {node.node_id[:12] for node in cluster.list_all_nodes() if not node.head}


async def load(url: str, clients: int, seconds: float) -> list[tuple[float, int | str]]:
    """Closed-loop clients; (send time, status or the exception's name) per request."""
    results: list[tuple[float, int | str]] = []
    end = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            sent = time.monotonic()
            try:
                response = await http.post(f"{url}/v2/models/tiny/infer", json=BODY)
                results.append((sent, response.status_code))
            except httpx.HTTPError as exc:
                results.append((sent, type(exc).__name__))

    async with httpx.AsyncClient(timeout=30.0) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return results


def test_triton_clients_get_what_onnxruntime_computes(front: ServerProcess,
                                                      cluster_repo: Path) -> None:
    result = triton_client(str(CLIENTS / "infer_both.py"), front.http.removeprefix("http://"),
                           front.grpc)
    assert result.returncode == 0, result.stderr[-3000:] + front.output()[-2000:]
    out = json.loads(result.stdout)
    runner = Repository(cluster_repo).load("tiny").runner
    expected = runner.run({"x": np.array(out["inputs"]["x"], np.float32),
                           "n": np.array(out["inputs"]["n"], np.int64)})
    for protocol in ("http", "grpc"):
        np.testing.assert_array_equal(np.array(out[protocol]["y"], np.float32), expected["y"])
        np.testing.assert_array_equal(np.array(out[protocol]["m"]), expected["m"])


def test_batches_reach_both_compute_nodes(front: ServerProcess, ray_cluster: Any) -> None:
    results = asyncio.run(load(front.http, clients=8, seconds=3.0))
    assert {status for _, status in results} == {200}
    batches = [(labels, count) for labels, count in metric(
        front, "surge_cluster_batches_total", model="tiny") if count > 0]
    assert {labels["node"] for labels, _ in batches} == compute_node_ids(ray_cluster)
    # The tensors went through shared memory (the nodes share this machine) with the direct
    # channel to each actor carrying only the slots' names, not as Ray actor calls.
    assert {labels["path"] for labels, _ in batches} == {"shm"}
    assert "no direct channel" not in front.output()


def test_model_that_fits_no_node_is_not_ready_with_the_reason(front: ServerProcess) -> None:
    response = httpx.get(f"{front.http}/v2/models/huge", timeout=10)
    assert response.status_code == 404
    reason = "no node of the Ray cluster can hold an instance (one needs CPU 64)"
    assert reason in response.json()["error"]
    assert reason in front.output()
    assert httpx.get(f"{front.http}/v2/models/huge/ready", timeout=10).status_code == 503
    assert httpx.get(f"{front.http}/v2/health/ready", timeout=10).status_code == 200


def test_a_second_front_end_owns_its_own_instances(front: ServerProcess, cluster_repo: Path,
                                                   ray_cluster: Any, tmp_path: Path) -> None:
    second = start_server(cluster_repo, tmp_path / "b.log", "--ray", ray_cluster.address,
                          "--models", "tiny")
    try:
        for server in (front, second):
            response = httpx.post(f"{server.http}/v2/models/tiny/infer", json=BODY, timeout=10)
            assert response.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
            assert metric(server, "surge_cluster_instances", model="tiny",
                          state="ready")[0][1] == 2
    finally:
        assert second.stop() == 0, second.output()[-3000:]
    # The second front end's actors went with it; the first one's were not touched.
    results = asyncio.run(load(front.http, clients=4, seconds=1.0))
    assert {status for _, status in results} == {200}
    assert metric(front, "surge_cluster_instances", model="tiny", state="ready")[0][1] == 2
    assert not metric(front, "surge_cluster_instances_lost_total", model="tiny")


@pytest.fixture
def victim(ray_cluster: Any) -> Iterator[Any]:
    """A compute node the test removes; a new one takes its place afterwards, so the cluster's
    later tests (in whatever order a worker runs the files) find two compute nodes again."""
    yield next(node for node in ray_cluster.list_all_nodes() if not node.head)
    ray_cluster.add_node(num_cpus=1, labels={"pool": "compute"})


def test_node_removed_under_load(front: ServerProcess, ray_cluster: Any, victim: Any) -> None:
    """Every accepted request is answered; the model serves again within seconds; the lost
    instance is replaced on the surviving node."""

    async def scenario() -> tuple[list[tuple[float, int | str]], float]:
        loader = asyncio.create_task(load(front.http, clients=8, seconds=6.0))
        await asyncio.sleep(1.5)
        removed = time.monotonic()
        await asyncio.to_thread(ray_cluster.remove_node, victim)
        return await loader, removed

    results, removed = asyncio.run(scenario())
    statuses = [status for _, status in results]
    assert all(isinstance(s, int) for s in statuses), statuses  # nothing hung or was cut off
    failed = [(t, s) for t, s in results if s != 200]
    assert {s for _, s in failed} <= {503, 504}
    assert len(failed) <= 8, failed  # at most the batches in flight on the lost node
    later = [s for t, s in results if t > removed + 3.0]
    assert later
    assert set(later) == {200}
    lost = metric(front, "surge_cluster_instances_lost_total", model="tiny")
    assert sum(count for _, count in lost) == 1
    deadline = time.monotonic() + 30
    while metric(front, "surge_cluster_instances", model="tiny", state="ready")[0][1] < 2:
        assert time.monotonic() < deadline, front.output()[-3000:]
        time.sleep(0.2)
    assert "lost (" in front.output()

"""Elastic capacity for real: while a model's queue stays full, `surge serve --ray` adds cluster
instances up to its maximum, the last one on a compute node that joins the cluster meanwhile;
once idle it removes them down to its floor. Scale events show in the metrics and the log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.cluster.conftest import metric
from tests.integration.server.conftest import ServerProcess, start_server
from tests.integration.server.models import tiny_onnx

pytestmark = pytest.mark.timeout(300)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}
# One CPU per instance: the two compute nodes hold two; the third waits for a node to join.
ELASTIC_CONFIG = """\
max_batch_size: 1
placement: cluster
cluster: {instances: 1, max_instances: 3, cpus: 1, node_labels: {pool: compute},
          scale_up_after_s: 1.0, scale_down_idle_s: 2.0, heartbeat_ms: 250,
          heartbeat_misses: 8}
"""


@pytest.fixture
def joining(ray_cluster: Any) -> Iterator[list[Any]]:
    """Nodes the test adds; removed once the server (set up after this) has stopped."""
    added: list[Any] = []
    yield added
    for node in added:
        ray_cluster.remove_node(node)


@pytest.fixture
def elastic(ray_cluster: Any, joining: list[Any], tmp_path: Path) -> Iterator[ServerProcess]:
    tiny_onnx(tmp_path / "repo" / "elastic" / "1" / "model.onnx")
    (tmp_path / "repo" / "elastic" / "config.yaml").write_text(ELASTIC_CONFIG)
    server = start_server(tmp_path / "repo", tmp_path / "elastic.log", "--ray",
                          ray_cluster.address)
    yield server
    assert server.stop() == 0, server.output()[-3000:]


class Load:
    """Closed-loop HTTP clients on a thread of their own, until stopped."""

    def __init__(self, url: str, clients: int) -> None:
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(url,), daemon=True)
                         for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, url: str) -> None:
        with httpx.Client(timeout=30.0) as http:
            while not self._stop.is_set():
                try:
                    status: int | str = http.post(f"{url}/v2/models/elastic/infer",
                                                  json=BODY).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.statuses.append(status)

    def stop(self) -> list[int | str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.statuses


def instances(server: ServerProcess, state: str) -> float:
    return metric(server, "surge_cluster_instances", model="elastic", state=state)[0][1]


def wait_for(what: Callable[[], bool], seconds: float, server: ServerProcess) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, server.output()[-4000:]
        time.sleep(0.25)


def test_instances_scale_onto_a_joining_node_and_back_down(elastic: ServerProcess,
                                                           ray_cluster: Any,
                                                           joining: list[Any]) -> None:
    assert instances(elastic, "ready") == 1
    load = Load(elastic.http, clients=12)
    try:
        # Full queue: a second instance on the other compute node, then a third that waits
        # for a node with a free CPU.
        wait_for(lambda: instances(elastic, "ready") == 2 and instances(elastic, "starting") == 1,
                 90, elastic)
        joined = ray_cluster.add_node(num_cpus=1, labels={"pool": "compute"})
        joining.append(joined)
        wait_for(lambda: instances(elastic, "ready") == 3, 90, elastic)
        new_node = joined.node_id[:12]
        wait_for(lambda: any(count > 0 for _, count in metric(
            elastic, "surge_cluster_batches_total", model="elastic", node=new_node)), 30,
            elastic)
    finally:
        statuses = load.stop()
    assert set(statuses) == {200}
    # Idle: back down to the floor.
    wait_for(lambda: instances(elastic, "ready") == 1, 60, elastic)
    events = {labels["direction"]: count for labels, count in metric(
        elastic, "surge_cluster_scale_events_total", model="elastic")}
    assert events == {"up": 2, "down": 2}
    log = elastic.output()
    assert log.count("model elastic scaled up") == 2
    assert log.count("model elastic scaled down") == 2
    assert "lost (" not in log  # no instance was taken for dead on the way


def test_with_the_only_node_that_fits_gone_requests_fail_at_once(ray_cluster: Any,
                                                                  tmp_path: Path) -> None:
    """The model's one node leaves: a request gets 503 naming why within seconds, not once
    `start_timeout_s` (120 s) has passed without an instance."""
    node = ray_cluster.add_node(num_cpus=1, labels={"pool": "lonely"})
    tiny_onnx(tmp_path / "repo" / "lonely" / "1" / "model.onnx")
    (tmp_path / "repo" / "lonely" / "config.yaml").write_text(
        "placement: cluster\ncluster: {instances: 1, cpus: 1, node_labels: {pool: lonely}}\n")
    server = start_server(tmp_path / "repo", tmp_path / "lonely.log", "--ray",
                          ray_cluster.address)
    try:
        url = f"{server.http}/v2/models/lonely/infer"
        assert httpx.post(url, json=BODY, timeout=30).status_code == 200
        ray_cluster.remove_node(node)
        node = None
        answer = httpx.post(url, json=BODY, timeout=150)
    finally:
        if node is not None:
            ray_cluster.remove_node(node)
        assert server.stop() == 0, server.output()[-3000:]
    assert answer.status_code == 503, answer.text
    assert "no live node of the Ray cluster can hold one (each needs CPU 1" in answer.json()[
        "error"]

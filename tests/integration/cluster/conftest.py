"""A Ray cluster on this machine for the cluster tests: a head with no CPUs for models and two
compute nodes with one CPU each, token authentication on. One cluster for the whole package:
starting one takes about ten seconds of CI's two cores."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.server.conftest import ServerProcess
from tests.integration.server.models import tiny_onnx

pytest.importorskip("ray")

TOKEN = "surge-test-" + "0" * 21  # what the cluster and its drivers share
TINY_CLUSTER_CONFIG = """\
max_batch_size: 8
placement: cluster
cluster: {instances: 2, cpus: 0.5, heartbeat_ms: 500, heartbeat_misses: 8}
batching: {max_queue_delay_ms: 1.0}
"""


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[object]:
    """Three Ray nodes on this machine: a head without CPUs and two compute nodes of one CPU.
    Package-scoped: its processes (GCS, raylets, agents: about 4% of a core while idle) stop
    once this package's tests are done rather than idle through the rest of the session."""
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                            "RAY_USAGE_STATS_ENABLED")}
    # The nodes inherit these; so do the `surge serve` processes the tests start.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN, RAY_USAGE_STATS_ENABLED="0")
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")  # Ray read its auth mode when imported: read it again
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1, labels={"pool": "compute"})
    cluster.add_node(num_cpus=1, labels={"pool": "compute"})
    try:
        yield cluster
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def cluster_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny` (y = x + 1, m = 2n) with two instances on the compute nodes; `huge` asks for a
    node no cluster here has."""
    root = tmp_path_factory.mktemp("cluster-repo")
    tiny_onnx(root / "tiny" / "1" / "model.onnx")
    (root / "tiny" / "config.yaml").write_text(TINY_CLUSTER_CONFIG)
    tiny_onnx(root / "huge" / "1" / "model.onnx")
    (root / "huge" / "config.yaml").write_text("placement: cluster\ncluster: {cpus: 64}\n")
    return root


def metric(server: ServerProcess, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric, with their labels, filtered by `labels`."""
    found = []
    for line in httpx.get(server.metrics, timeout=10).text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match:
            sample = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            if all(sample.get(k) == v for k, v in labels.items()):
                found.append((sample, float(match.group(2))))
    return found

"""`queue.timeout_action: delay` and `queue.allow_timeout_override: false` on a real server with
a slow model (600 ms a request, one instance): a request whose deadline passes in the queue is
answered 200 late rather than 504, and a model that ignores the requests' own `timeout`
answers 504 at its default timeout however long a timeout the request brings."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, start_server
from tests.integration.server.models import make_repository

# alone: the queued request must still wait when the test sees the queue (the default timeout
# is 100 ms), which a second worker's load beside it could make it miss
pytestmark = [pytest.mark.timeout(240), pytest.mark.alone]
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
DELAY = {"max_size": 8, "timeout_action": "DELAY"}
IGNORED = {"max_size": 8, "default_timeout_ms": 100, "allow_timeout_override": False}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("timeout-action-repo")
    repo = make_repository(root, slow_delay_ms=600, slow_max_batch=1, with_tiny=False)
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def _load(server: ServerProcess, queue: dict[str, Any]) -> httpx.Response:
    """Reload `slow` with `queue`: a fresh version, whose batch times are not measured yet (so
    admission predicts nothing and takes every request that fits the queue)."""
    return httpx.post(f"{server.http}/v2/repository/models/slow/load", timeout=120, json={
        "parameters": {"config": json.dumps({"queue": queue})}})


def _metric(server: ServerProcess, name: str, labels: str) -> float:
    text = httpx.get(server.metrics).text
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _behind_a_backlog(server: ServerProcess, timeout_us: int
                            ) -> tuple[httpx.Response, list[int]]:
    """A request with `timeout_us`, sent once a request waits in the queue behind the
    instance's two batches (it waits in the queue until the first is done, hundreds of ms),
    and the statuses of the three requests without a timeout sent before it, in order."""
    async with httpx.AsyncClient(base_url=server.http, timeout=60.0) as client:
        ahead = [asyncio.ensure_future(client.post("/v2/models/slow/infer", json=BODY))
                 for _ in range(3)]
        while not _metric(server, "surge_queue_depth", 'model="slow"'):
            assert not any(f.done() for f in ahead), "the backlog was answered before it formed"
            await asyncio.sleep(0.01)
        answer = await client.post("/v2/models/slow/infer", json={
            **BODY, "parameters": {"timeout": timeout_us}})
        return answer, sorted(r.status_code for r in await asyncio.gather(*ahead))


def test_a_delayed_request_is_answered_late_not_504(served: ServerProcess) -> None:
    assert _load(served, DELAY).status_code == 200
    echo = httpx.get(f"{served.http}/v2/models/slow/config").json()
    assert echo["dynamic_batching"]["default_queue_policy"]["timeout_action"] == "DELAY"
    shed = 'model="slow",reason="deadline"'
    before = _metric(served, "surge_shed_requests_total", shed)
    answer, ahead = asyncio.run(_behind_a_backlog(served, timeout_us=50_000))  # 50 ms
    assert answer.status_code == 200, answer.text
    assert ahead == [200] * 3
    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    assert _metric(served, "surge_shed_requests_total", shed) == before  # not shed


def test_an_ignored_own_timeout_leaves_the_default_one(served: ServerProcess) -> None:
    assert _load(served, IGNORED).status_code == 200
    echo = httpx.get(f"{served.http}/v2/models/slow/config").json()
    assert echo["dynamic_batching"]["default_queue_policy"]["allow_timeout_override"] is False
    answer, ahead = asyncio.run(_behind_a_backlog(served, timeout_us=30_000_000))  # 30 s
    assert answer.status_code == 504, answer.text
    assert ahead == [200, 200, 504]  # the one queued had the default 100 ms too
    assert "deadline exceeded" in answer.json()["error"]


def test_a_bad_policy_in_a_load_override_is_a_400_naming_it(served: ServerProcess) -> None:
    bad = _load(served, {"timeout_action": "drop"})
    assert bad.status_code == 400
    assert "queue.timeout_action" in bad.json()["error"]
    assert "'drop'" in bad.json()["error"]
    bad = _load(served, {"timeout_action": "delay", "allow_timeout_override": False})
    assert bad.status_code == 400
    assert "queue.timeout_action delay never applies" in bad.json()["error"]
    assert httpx.post(f"{served.http}/v2/repository/models/slow/load",
                      timeout=120).status_code == 200  # back to config.yaml


def test_the_models_delay_reaching_only_a_level_with_a_deadline_loads(
        served: ServerProcess) -> None:
    """Levels not listed ignore the requests' `timeout` and have no default one; level 9
    follows the model's delay with a default timeout of its own: the delay applies there."""
    answer = _load(served, {"timeout_action": "delay", "allow_timeout_override": False,
                            "priorities": {"9": {"default_timeout_ms": 2000}}})
    assert answer.status_code == 200, answer.text
    echo = httpx.get(f"{served.http}/v2/models/slow/config").json()["dynamic_batching"]
    assert echo["default_queue_policy"]["timeout_action"] == "DELAY"
    assert echo["priority_queue_policy"]["9"] == {
        "timeout_action": "DELAY", "default_timeout_microseconds": 2_000_000,
        "allow_timeout_override": False, "max_queue_size": 256}
    assert httpx.post(f"{served.http}/v2/repository/models/slow/load",
                      timeout=120).status_code == 200  # back to config.yaml

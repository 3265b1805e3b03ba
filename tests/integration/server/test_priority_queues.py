"""`queue.priorities` on a real server with a slow model (300 ms per request, one instance):
a level's own bound keeps its waiting requests from filling the model's queue, a level's own
default deadline answers its starved requests, and a load override sets and checks levels,
with one front end or several."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, start_server
from tests.integration.server.models import make_repository
from tests.integration.server.test_frontends import two_frontends

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(240)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
BULK, HOLD, URGENT = 9, 7, 1  # V2 priorities
# The whole queue holds 6; bulk work may take 3 of it; requests at HOLD wait 300 ms at most.
QUEUE = f"""\
queue:
  max_size: 6
  priorities:
    {BULK}: {{max_size: 3}}
    {HOLD}: {{default_timeout_ms: 300}}
"""
LEVEL_FULL = f"queue full for priority {BULK}"


def _repository(root: Path) -> Path:
    repo = make_repository(root, slow_delay_ms=300, slow_max_batch=1, with_tiny=False)
    config = repo / "slow" / "config.yaml"
    config.write_text(re.sub(r"^queue: .*$", QUEUE, config.read_text(), flags=re.MULTILINE))
    return repo


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = _repository(tmp_path_factory.mktemp("priority-repo"))
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def _body(priority: int) -> dict:
    return {**BODY, "parameters": {"priority": priority}}


async def _flood_then_urgent(url: str, bulk: int, urgent: int
                             ) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """`bulk` requests at BULK at once, then (once they are in) `urgent` at URGENT."""
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        flood = [asyncio.ensure_future(client.post("/v2/models/slow/infer", json=_body(BULK)))
                 for _ in range(bulk)]
        while sum(f.done() for f in flood) < bulk - 5:  # the refusals are answered at once
            await asyncio.sleep(0.01)
        later = await asyncio.gather(*(client.post("/v2/models/slow/infer", json=_body(URGENT))
                                       for _ in range(urgent)))
        return list(await asyncio.gather(*flood)), list(later)


def _shed(server: ServerProcess) -> float:
    text = httpx.get(server.metrics).text
    found = re.search(r'^surge_shed_requests_total\{model="slow",reason="queue_full"\} (\S+)$',
                      text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_waiting_bulk_work_leaves_room_for_urgent_requests(served: ServerProcess) -> None:
    before = _shed(served)
    bulk, urgent = asyncio.run(_flood_then_urgent(served.http, 12, 3))
    # The one instance holds two batches and the bulk level three queued: five at most.
    statuses = Counter(r.status_code for r in bulk)
    assert statuses[503] >= 1, statuses
    refused = [r for r in bulk if r.status_code == 503]
    assert all(LEVEL_FULL in r.json()["error"] for r in refused), refused[0].text
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert [r.status_code for r in urgent] == [200, 200, 200], [r.text for r in urgent]
    assert _shed(served) - before == statuses[503]  # counted as any full queue


def test_a_full_level_is_unavailable_over_grpc(served: ServerProcess) -> None:
    async def codes() -> Counter[str]:
        async with grpc.aio.insecure_channel(served.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def call() -> str:
                message = pb.ModelInferRequest(model_name="slow")
                message.inputs.add(name="x", datatype="FP32", shape=[1, 4]) \
                    .contents.fp32_contents.extend([1, 2, 3, 4])
                message.parameters["priority"].int64_param = BULK
                try:
                    await stub.ModelInfer(message, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    return f"{exc.code().name}: {exc.details()}"
                return "OK"

            return Counter(await asyncio.gather(*(call() for _ in range(12))))

    found = asyncio.run(codes())
    assert set(found) == {"OK", f"UNAVAILABLE: {LEVEL_FULL} (3 requests of that priority "
                          "waiting; its max_size is 3); requests of other priorities are still "
                          "taken"}, found


def test_a_level_default_timeout_answers_a_starved_request(served: ServerProcess) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=served.http, timeout=60.0) as client:
            ahead = [asyncio.ensure_future(client.post("/v2/models/slow/infer",
                                                       json=_body(URGENT))) for _ in range(4)]
            await asyncio.sleep(0.05)  # order only: the urgent work is queued first
            # behind about a second of more urgent work: its level's 300 ms run out first
            held = client.post("/v2/models/slow/infer", json=_body(HOLD))
            plain = client.post("/v2/models/slow/infer", json=_body(0))  # no deadline
            answers = await asyncio.gather(held, plain, *ahead)
            return answers[0], answers[1]

    held, plain = asyncio.run(scenario())
    assert held.status_code in (503, 504), held.text  # refused at admission or expired
    assert "deadline" in held.json()["error"]
    assert plain.status_code == 200, plain.text


def test_a_load_override_sets_levels_and_a_bad_one_is_a_400(served: ServerProcess) -> None:
    url = f"{served.http}/v2/repository/models/slow/load"
    bad = httpx.post(url, timeout=120, json={"parameters": {"config": (
        '{"queue": {"max_size": 6, "priorities": {"9": {"max_size": 7}}}}')}})
    assert bad.status_code == 400
    assert "queue.priorities.9.max_size (7) is above queue.max_size (6)" in bad.json()["error"]
    bad = httpx.post(url, timeout=120, json={"parameters": {"config": (
        '{"queue": {"priorities": {"urgent": {"max_size": 1}}}}')}})
    assert bad.status_code == 400
    assert "key 'urgent' is no priority level" in bad.json()["error"]
    good = httpx.post(url, timeout=120, json={"parameters": {"config": (
        '{"queue": {"max_size": 6, "priorities": {"9": {"max_size": 1}}}}')}})
    assert good.status_code == 200, good.text
    bulk, urgent = asyncio.run(_flood_then_urgent(served.http, 12, 4))
    refused = [r for r in bulk if r.status_code == 503]  # two computing, one queued
    assert refused
    assert all(LEVEL_FULL in r.json()["error"] for r in refused), refused
    assert [r.status_code for r in urgent] == [200] * 4
    assert httpx.post(url, timeout=120).status_code == 200  # back to config.yaml


@pytest.fixture
def frontends(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from two_frontends(_repository(tmp_path / "repo"), tmp_path)


def test_every_front_end_takes_the_levels(frontends: ServerProcess) -> None:
    url = f"{frontends.http}/v2/repository/models/slow/load"
    # recorded for the other front end as JSON, whose keys are strings: answered once both
    # front ends loaded it
    good = httpx.post(url, timeout=120, json={"parameters": {"config": (
        '{"queue": {"max_size": 6, "priorities": {"9": {"max_size": 2}}}}')}})
    assert good.status_code == 200, good.text
    bulk, urgent = asyncio.run(_flood_then_urgent(frontends.http, 12, 2))
    refused = [r for r in bulk if r.status_code == 503]  # each front end queues two at most
    assert refused
    assert all(LEVEL_FULL in r.json()["error"] for r in refused), refused
    assert [r.status_code for r in urgent] == [200, 200]

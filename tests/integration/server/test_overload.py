"""Overload behaviour of a real server with a slow model (50 ms per batch of up to 2, queue 32):
503 + Retry-After when full, 504 past the deadline, cancelled requests leave the queue,
a killed worker fails only its batch, SIGTERM finishes accepted requests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, start_server
from tests.integration.server.models import make_repository

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(180)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = make_repository(tmp_path_factory.mktemp("slow-repo"), slow_delay_ms=50,
                           slow_queue=32, slow_max_batch=2, with_tiny=False)
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log", "--grace", "10")
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def _body(priority: int = 0, timeout_us: int = 0) -> dict:
    return {**BODY, "parameters": {"priority": priority, "timeout": timeout_us}}


async def _post(client: httpx.AsyncClient, body: dict) -> httpx.Response:
    return await client.post("/v2/models/slow/infer", json=body)


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.metrics).text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{selector}\}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _counted(server: ServerProcess, protocol: str) -> Counter[str]:
    """`slow`'s requests by outcome as `protocol` counted them, and (`time:<outcome>`) the
    request histogram's counts."""
    counted: Counter[str] = Counter()
    for outcome in ("success", "rejected"):
        counted[outcome] = _metric(server, "surge_requests_total", model="slow",
                                   outcome=outcome, protocol=protocol)
    for outcome in ("success", "refused"):
        counted[f"time:{outcome}"] = _metric(server, "surge_request_duration_seconds_count",
                                             model="slow", outcome=outcome)
    return counted


def _ended(server: ServerProcess) -> Counter[str]:
    """`slow`'s gRPC requests that expired or were cancelled."""
    return Counter({outcome: _metric(server, "surge_requests_total", model="slow",
                                     outcome=outcome, protocol="grpc")
                    for outcome in ("expired", "cancelled")})


def _stats(server: ServerProcess) -> dict:
    return httpx.get(f"{server.http}/v2/models/slow/stats").json()["model_stats"][0]


def test_full_queue_answers_503_with_retry_after(slow_server: ServerProcess) -> None:
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=slow_server.http, timeout=60.0) as client:
            return await asyncio.gather(*(_post(client, _body()) for _ in range(80)))

    before = _counted(slow_server, "http")
    responses = asyncio.run(flood())
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    # Counted under protocol http; the quick 503s timed apart from the answers (the p99 of
    # `surge bench`'s live line reads only the answers').
    counted = _counted(slow_server, "http")
    counted.subtract(before)
    assert counted == {"success": statuses[200], "rejected": statuses[503],
                       "time:success": statuses[200], "time:refused": statuses[503]}, counted
    rejected = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["retry-after"]) >= 1 for r in rejected)
    assert all("queue full" in r.json()["error"] or "deadline" in r.json()["error"]
               for r in rejected)


def test_deadline_passing_in_the_queue_answers_504(slow_server: ServerProcess) -> None:
    # A reloaded model has measured no batch yet, so admission cannot predict completion
    # times and lets a request in whose deadline will pass in the queue.
    reload = httpx.post(f"{slow_server.http}/v2/repository/models/slow/load", timeout=120)
    assert reload.status_code == 200

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=slow_server.http, timeout=60.0) as client:
            ahead = [asyncio.ensure_future(_post(client, _body())) for _ in range(12)]
            await asyncio.sleep(0.02)
            # behind six batches (about 300 ms) of requests of its priority, a 100 ms deadline
            late = asyncio.ensure_future(_post(client, _body(timeout_us=100_000)))
            await asyncio.gather(*ahead)
            return await late

    response = asyncio.run(scenario())
    assert response.status_code == 504, response.text
    assert "deadline" in response.json()["error"]


def test_disconnected_clients_leave_the_queue(slow_server: ServerProcess) -> None:
    before = _stats(slow_server)["inference_count"]
    cancelled_before = _metric(slow_server, "surge_requests_total", model="slow",
                               outcome="cancelled", protocol="http")

    async def impatient() -> int:
        async with httpx.AsyncClient(base_url=slow_server.http, timeout=0.1) as client:
            results = await asyncio.gather(*(_post(client, _body()) for _ in range(16)),
                                           return_exceptions=True)
        return sum(isinstance(r, httpx.TimeoutException) for r in results)

    timed_out = asyncio.run(impatient())
    time.sleep(0.8)  # long enough for all 16 to have been computed, had they stayed queued
    computed = _stats(slow_server)["inference_count"] - before
    assert timed_out >= 10
    assert computed <= 10, computed  # only batches dispatched within the 100 ms
    cancelled = _metric(slow_server, "surge_requests_total", model="slow",
                        outcome="cancelled", protocol="http") - cancelled_before
    # a batch finishing just as its clients give up is counted a success by the server
    assert timed_out - 2 <= cancelled <= timed_out
    assert _metric(slow_server, "surge_queue_depth", model="slow") == 0


def test_reset_connections_leave_the_queue(slow_server: ServerProcess) -> None:
    """A connection reset cancels its queued requests, as a close (or a half-close) does."""
    before = _stats(slow_server)["inference_count"]
    body = json.dumps(_body()).encode()
    request = (b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
               b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
               + body)
    port = int(slow_server.http.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5.0) for _ in range(16)]
    for sock in sockets:
        sock.sendall(request)
    time.sleep(0.1)
    for sock in sockets:  # linger 0: close() sends a reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.8)  # long enough for all 16 to have been computed, had they stayed queued
    assert _stats(slow_server)["inference_count"] - before <= 10
    assert _metric(slow_server, "surge_queue_depth", model="slow") == 0


def test_grpc_status_codes_and_cancellation(slow_server: ServerProcess) -> None:
    def request(**params: int) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name="slow")
        message.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents \
            .extend([1, 2, 3, 4])
        for key, value in params.items():
            message.parameters[key].int64_param = value
        return message

    async def scenario() -> tuple[Counter[str], grpc.StatusCode, grpc.StatusCode]:
        async with grpc.aio.insecure_channel(slow_server.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def code(message: pb.ModelInferRequest, timeout: float = 30.0) -> str:
                try:
                    await stub.ModelInfer(message, timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    return str(exc.code().name)
                return "OK"

            before = _counted(slow_server, "grpc"), _counted(slow_server, "http")
            flood = Counter(await asyncio.gather(*(code(request()) for _ in range(80))))
            counted = _counted(slow_server, "grpc")
            counted.subtract(before[0])
            assert counted == {"success": flood["OK"], "rejected": flood["UNAVAILABLE"],
                               "time:success": flood["OK"],
                               "time:refused": flood["UNAVAILABLE"]}, counted
            http = _counted(slow_server, "http")
            http.subtract(before[1])
            assert +http == {"time:success": flood["OK"], "time:refused": flood["UNAVAILABLE"]}
            bad = request()
            bad.inputs[0].shape[:] = [1, 5]
            unknown = request()
            unknown.model_name = "nope"
            codes = await asyncio.gather(code(bad), code(unknown))
            before = _stats(slow_server)["inference_count"]
            ended_before = _ended(slow_server)
            cancelled = await asyncio.gather(*(code(request(), timeout=0.1) for _ in range(16)))
            await asyncio.sleep(0.8)
            computed = _stats(slow_server)["inference_count"] - before
            assert Counter(cancelled)["DEADLINE_EXCEEDED"] >= 10, cancelled
            assert computed <= 10, computed
            ended = _ended(slow_server)
            ended.subtract(ended_before)
            # Each past its deadline: the server's timer or the client's reset ended it. Both
            # were counted `cancelled`, as if the client had given up.
            assert ended.total() == Counter(cancelled)["DEADLINE_EXCEEDED"], ended
            assert ended["expired"] >= 1, ended
            return flood, *codes  # type: ignore[return-value]

    flood, bad_code, unknown_code = asyncio.run(scenario())
    assert set(flood) == {"OK", "UNAVAILABLE"}, flood
    assert bad_code == "INVALID_ARGUMENT"
    assert unknown_code == "NOT_FOUND"


def test_killed_worker_fails_only_its_batch_then_recovers(tmp_path: Path) -> None:
    # Two instances: the model stays ready while the killed one restarts.
    repo = make_repository(tmp_path / "repo", slow_delay_ms=50, slow_queue=64, slow_max_batch=2,
                           slow_instances=2, with_tiny=False)
    proc = start_server(repo, tmp_path / "server.log")

    async def load() -> list[int]:
        statuses: list[int] = []
        stop = time.monotonic() + 2.5

        async def client_loop(client: httpx.AsyncClient) -> None:
            while time.monotonic() < stop:
                statuses.append((await _post(client, _body())).status_code)

        async with httpx.AsyncClient(base_url=proc.http, timeout=30.0) as client:
            loops = [asyncio.ensure_future(client_loop(client)) for _ in range(4)]
            await asyncio.sleep(0.5)
            os.kill(proc.worker_pids()[0], signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*loops), timeout=60.0)  # no hung request
        return statuses

    try:
        statuses = Counter(asyncio.run(load()))
        failed = sum(n for status, n in statuses.items() if status != 200)
        assert set(statuses) <= {200, 503}, statuses
        assert 1 <= failed <= 2, statuses  # the killed worker's batch (at most 2 requests)
        response = httpx.post(f"{proc.http}/v2/models/slow/infer", json=BODY, timeout=30)
        assert response.status_code == 200
        assert "worker_restarts" in httpx.get(proc.metrics).text
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]


def test_sigterm_under_load_finishes_accepted_requests(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", slow_delay_ms=50, slow_queue=32, slow_max_batch=2,
                           with_tiny=False)
    proc = start_server(repo, tmp_path / "server.log", "--grace", "20")

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=proc.http, timeout=60.0) as client:
            accepted = [asyncio.ensure_future(_post(client, _body())) for _ in range(12)]
            await asyncio.sleep(0.3)  # all 12 are in the queue or computing (6 batches)
            proc.process.send_signal(signal.SIGTERM)
            return [r.status_code for r in await asyncio.gather(*accepted)]

    try:
        statuses = asyncio.run(scenario())
    finally:
        code = proc.stop()
    assert statuses == [200] * 12
    assert code == 0
    assert "drained and stopped" in proc.output()

"""One client's poisoned ids among other clients' good ones, through a real `surge serve` of the
recommendation entry (`examples/recommendation/repository/dlrm`, batching with a queue delay so
that the requests share batches): an id past an embedding table, a negative one past it, INT64's
limits. The entry is served without its declared id ranges, so that the ids reach the tables
(test_declared_ranges.py serves it as it is). Each poisoned request gets its own 400 (gRPC
INVALID_ARGUMENT) naming the Gather that refused it; the requests batched with it are answered,
with the scores they get alone."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import yaml
from tests.integration.server.conftest import ServerProcess, start_server

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

ENTRY = Path(__file__).resolve().parents[3] / "examples" / "recommendation" / "repository" / "dlrm"
I64 = np.iinfo(np.int64)
BAD_USERS = [2000, -2001, int(I64.max), int(I64.min)]  # the user table has 2,000 rows

pytestmark = pytest.mark.skipif(not (ENTRY / "1" / "model.onnx").is_file(),
                                reason="the recommendation entry is not in the repository")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("poisoned")
    shutil.copytree(ENTRY / "1", root / "dlrm" / "1")
    config = yaml.safe_load((ENTRY / "config.yaml").read_text())
    config.pop("slo_p99_ms")
    config.pop("inputs")  # their ranges would refuse these ids before the engine sees them
    config.update(instances=1, threads=1, batching={"max_queue_delay_ms": 300.0})
    (root / "dlrm" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = start_server(root, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.output()


def columns(user: int, n: int = 3) -> dict[str, np.ndarray]:
    return {"user": np.full(n, user, np.int64), "item": np.arange(n, dtype=np.int64),
            "category": np.ones(n, np.int64), "dense": np.full((n, 2), 0.5, np.float32)}


def http_json(server: ServerProcess, arrays: dict[str, np.ndarray]) -> httpx.Response:
    inputs = [{"name": name, "datatype": "INT64" if a.dtype == np.int64 else "FP32",
               "shape": list(a.shape), "data": a.ravel().tolist()} for name, a in arrays.items()]
    return httpx.post(f"{server.http}/v2/models/dlrm/infer", json={"inputs": inputs}, timeout=60)


def http_binary(server: ServerProcess, arrays: dict[str, np.ndarray]) -> httpx.Response:
    blobs = [a.tobytes() for a in arrays.values()]
    head = json.dumps({"inputs": [
        {"name": name, "datatype": "INT64" if a.dtype == np.int64 else "FP32",
         "shape": list(a.shape), "parameters": {"binary_data_size": len(blob)}}
        for (name, a), blob in zip(arrays.items(), blobs, strict=True)]}).encode()
    return httpx.post(f"{server.http}/v2/models/dlrm/infer", content=head + b"".join(blobs),
                      headers={"Inference-Header-Content-Length": str(len(head))}, timeout=60)


def scores(reply: httpx.Response) -> list[float]:
    assert reply.status_code == 200, reply.text
    return [round(x, 5) for x in reply.json()["outputs"][0]["data"]]


def test_poisoned_ids_get_400_and_the_requests_batched_with_them_are_answered(
        server: ServerProcess) -> None:
    alone = {user: scores(http_json(server, columns(user))) for user in (3, 7, 1999)}

    def one(i: int) -> tuple[int, int, str]:
        user = BAD_USERS[i % 4] if i % 3 == 0 else (3, 7, 1999)[i % 3]
        reply = (http_binary if i % 2 else http_json)(server, columns(user))
        return user, reply.status_code, reply.text

    before = _stats(server)
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(48)))
    after = _stats(server)
    assert after["execution_count"] - before["execution_count"] < 40  # they shared batches
    for user, status, text in answers:
        if user in BAD_USERS:
            assert status == 400, text
            assert "Gather" in json.loads(text)["error"]
            assert "out of data bounds" in text
        else:
            assert status == 200, text
            assert [round(x, 5) for x in json.loads(text)["outputs"][0]["data"]] == alone[user]
    assert httpx.get(f"{server.http}/v2/health/ready", timeout=10).status_code == 200


def test_grpc_poisoned_ids_are_invalid_argument_and_the_others_ok(server: ServerProcess) -> None:
    def message(user: int) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="dlrm")
        for name, array in columns(user).items():
            tensor = request.inputs.add(name=name, datatype="INT64" if array.dtype == np.int64
                                        else "FP32", shape=list(array.shape))
            contents = tensor.contents.int64_contents if array.dtype == np.int64 \
                else tensor.contents.fp32_contents
            contents.extend(array.ravel().tolist())
        return request

    async def scenario() -> list[str]:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def code(user: int) -> str:
                try:
                    await stub.ModelInfer(message(user), timeout=60)
                except grpc.aio.AioRpcError as error:
                    return str(error.code().name)
                return "OK"

            return list(await asyncio.gather(*(code(u) for u in [5, *BAD_USERS, 6, 7, 8])))

    assert asyncio.run(scenario()) == ["OK"] + ["INVALID_ARGUMENT"] * 4 + ["OK"] * 3


def _stats(server: ServerProcess) -> dict[str, int]:
    reply = httpx.get(f"{server.http}/v2/models/dlrm/stats", timeout=10).json()
    return reply["model_stats"][0]

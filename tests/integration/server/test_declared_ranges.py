"""The recommendation entry served as it ships (`examples/recommendation/repository/dlrm`, its
config declaring each id's table range and finite dense features), with a queue delay so that
concurrent requests share batches: an id of -1, which ONNX's Gather would read as the table's
last row, and a NaN feature (binary data; JSON has no NaN) are refused with a 400 (gRPC
INVALID_ARGUMENT) naming the input, the value and the declared range, before batching; the
good requests sent with them are answered with the scores they get alone."""

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
USER_RANGE = "input 'user' holds -1, but its config declares values in [0, 1999]"
DENSE_FINITE = "input 'dense' holds NaN, but its config declares finite values"

pytestmark = pytest.mark.skipif(not (ENTRY / "1" / "model.onnx").is_file(),
                                reason="the recommendation entry is not in the repository")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("ranges")
    shutil.copytree(ENTRY / "1", root / "dlrm" / "1")
    config = yaml.safe_load((ENTRY / "config.yaml").read_text())
    config.pop("slo_p99_ms")
    config.update(instances=1, threads=1, batching={"max_queue_delay_ms": 200.0})
    (root / "dlrm" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = start_server(root, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.output()


def columns(user: int, dense: float = 0.5) -> dict[str, np.ndarray]:
    return {"user": np.array([user, 3], np.int64), "item": np.array([0, 1], np.int64),
            "category": np.array([1, 2], np.int64), "dense": np.full((2, 2), dense, np.float32)}


def _datatype(array: np.ndarray) -> str:
    return "INT64" if array.dtype == np.int64 else "FP32"


def http_json(server: ServerProcess, arrays: dict[str, np.ndarray]) -> httpx.Response:
    inputs = [{"name": name, "datatype": _datatype(a), "shape": list(a.shape),
               "data": a.ravel().tolist()} for name, a in arrays.items()]
    return httpx.post(f"{server.http}/v2/models/dlrm/infer", json={"inputs": inputs}, timeout=60)


def http_binary(server: ServerProcess, arrays: dict[str, np.ndarray]) -> httpx.Response:
    blobs = [a.tobytes() for a in arrays.values()]
    head = json.dumps({"inputs": [
        {"name": name, "datatype": _datatype(a), "shape": list(a.shape),
         "parameters": {"binary_data_size": len(blob)}}
        for (name, a), blob in zip(arrays.items(), blobs, strict=True)]}).encode()
    return httpx.post(f"{server.http}/v2/models/dlrm/infer", content=head + b"".join(blobs),
                      headers={"Inference-Header-Content-Length": str(len(head))}, timeout=60)


def test_out_of_range_requests_get_400_and_those_batched_with_them_are_answered(
        server: ServerProcess) -> None:
    alone = http_binary(server, columns(7))
    assert alone.status_code == 200, alone.text
    # JSON has no NaN: a NaN comes in binary (or gRPC)
    cases = [(7, 0.5, http_json), (7, 0.5, http_binary), (-1, 0.5, http_json),
             (-1, 0.5, http_binary), (7, float("nan"), http_binary)] * 3

    def one(case: tuple) -> httpx.Response:
        user, dense, send = case
        return send(server, columns(user, dense))

    before = _stats(server)
    with ThreadPoolExecutor(len(cases)) as pool:
        replies = list(pool.map(one, cases))
    after = _stats(server)
    good = [case for case in cases if case[0] == 7 and case[1] == 0.5]
    assert after["inference_count"] - before["inference_count"] == 2 * len(good)  # rows
    assert after["execution_count"] - before["execution_count"] < len(good)  # shared batches
    for (user, dense, _), reply in zip(cases, replies, strict=True):
        if user == -1 or dense != dense:
            assert reply.status_code == 400, reply.text
            assert reply.json() == {"error": USER_RANGE if user == -1 else DENSE_FINITE}
        else:
            assert reply.status_code == 200, reply.text
            assert reply.json()["outputs"] == alone.json()["outputs"]


def test_grpc_refuses_an_id_of_minus_one_as_invalid_argument(server: ServerProcess) -> None:
    def message(user: int) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="dlrm")
        for name, array in columns(user).items():
            tensor = request.inputs.add(name=name, datatype=_datatype(array),
                                        shape=list(array.shape))
            contents = tensor.contents.int64_contents if array.dtype == np.int64 \
                else tensor.contents.fp32_contents
            contents.extend(array.ravel().tolist())
        return request

    async def scenario() -> list[str]:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def outcome(user: int) -> str:
                try:
                    await stub.ModelInfer(message(user), timeout=60)
                except grpc.aio.AioRpcError as error:
                    return f"{error.code().name}: {error.details()}"
                return "OK"

            return list(await asyncio.gather(*(outcome(u) for u in (5, -1, 1999))))

    assert asyncio.run(scenario()) == ["OK", f"INVALID_ARGUMENT: {USER_RANGE}", "OK"]


def _stats(server: ServerProcess) -> dict[str, int]:
    reply = httpx.get(f"{server.http}/v2/models/dlrm/stats", timeout=10).json()
    return reply["model_stats"][0]

"""The recommendation entry (`examples/recommendation/repository/dlrm`) served by a real
`surge serve` for tests of poisoned inputs: the server, and requests over HTTP JSON, HTTP
binary and gRPC."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml
from tests.integration.server.conftest import ServerProcess, start_server

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

ENTRY = Path(__file__).resolve().parents[3] / "examples" / "recommendation" / "repository" / "dlrm"
needs_entry = pytest.mark.skipif(not (ENTRY / "1" / "model.onnx").is_file(),
                                 reason="the recommendation entry is not in the repository")


def serve_entry(root: Path, log: Path, delay_ms: float, **changes: Any) -> ServerProcess:
    """The entry with one single-threaded instance and a queue delay (so that concurrent
    requests share batches), its config changed by `changes` (a None value removes a key)."""
    shutil.copytree(ENTRY / "1", root / "dlrm" / "1")
    config = yaml.safe_load((ENTRY / "config.yaml").read_text())
    config.pop("slo_p99_ms")
    config.update(instances=1, threads=1, batching={"max_queue_delay_ms": delay_ms})
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (root / "dlrm" / "config.yaml").write_text(yaml.safe_dump(config))
    return start_server(root, log)


def datatype(array: np.ndarray) -> str:
    return "INT64" if array.dtype == np.int64 else "FP32"


def http_json(server: ServerProcess, arrays: dict[str, np.ndarray]) -> httpx.Response:
    inputs = [{"name": name, "datatype": datatype(a), "shape": list(a.shape),
               "data": a.ravel().tolist()} for name, a in arrays.items()]
    return httpx.post(f"{server.http}/v2/models/dlrm/infer", json={"inputs": inputs}, timeout=60)


def http_binary(server: ServerProcess, arrays: dict[str, np.ndarray]) -> httpx.Response:
    blobs = [a.tobytes() for a in arrays.values()]
    head = json.dumps({"inputs": [
        {"name": name, "datatype": datatype(a), "shape": list(a.shape),
         "parameters": {"binary_data_size": len(blob)}}
        for (name, a), blob in zip(arrays.items(), blobs, strict=True)]}).encode()
    return httpx.post(f"{server.http}/v2/models/dlrm/infer", content=head + b"".join(blobs),
                      headers={"Inference-Header-Content-Length": str(len(head))}, timeout=60)


def grpc_request(arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="dlrm")
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, datatype=datatype(array),
                                    shape=list(array.shape))
        contents = tensor.contents.int64_contents if array.dtype == np.int64 \
            else tensor.contents.fp32_contents
        contents.extend(array.ravel().tolist())
    return request


def grpc_outcomes(server: ServerProcess, requests: list[pb.ModelInferRequest]) -> list[str]:
    """Each request's outcome, sent together on one channel: "OK" or "CODE: details"."""
    async def scenario() -> list[str]:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def outcome(request: pb.ModelInferRequest) -> str:
                try:
                    await stub.ModelInfer(request, timeout=60)
                except grpc.aio.AioRpcError as error:
                    return f"{error.code().name}: {error.details()}"
                return "OK"

            return list(await asyncio.gather(*(outcome(r) for r in requests)))

    return asyncio.run(scenario())


def stats(server: ServerProcess) -> dict[str, int]:
    reply = httpx.get(f"{server.http}/v2/models/dlrm/stats", timeout=10).json()
    return reply["model_stats"][0]

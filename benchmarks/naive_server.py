"""The naive baseline for benchmarks/serving.py: a starlette app, one request = one forward pass.

JSON tensors in and out (V2 request/response shape, so the same load generator drives it),
ONNX Runtime in starlette's thread pool, no batching, no queue limits: what a first server
written around a model usually looks like.
Usage: python benchmarks/naive_server.py MODEL_NAME MODEL.onnx PORT THREADS
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from surge.runtimes.onnx_runner import onnx_signature


def build(name: str, path: str, threads: int) -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    signature = onnx_signature(path)  # type: ignore[arg-type]
    metadata = {
        "name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                   for s in signature.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                    for s in signature.outputs],
    }

    async def model_metadata(request: Request) -> JSONResponse:
        return JSONResponse(metadata)

    async def infer(request: Request) -> JSONResponse:
        body = await request.json()
        feeds = {i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"])
                 for i in body["inputs"]}
        results = await run_in_threadpool(session.run, None, feeds)
        outputs = [{"name": o.name, "datatype": "FP32", "shape": list(r.shape),
                    "data": r.reshape(-1).tolist()}
                   for o, r in zip(session.get_outputs(), results, strict=True)]
        return JSONResponse({"model_name": name, "model_version": "1", "outputs": outputs})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({})

    return Starlette(routes=[
        Route("/v2/health/ready", ready),
        Route(f"/v2/models/{name}", model_metadata),
        Route(f"/v2/models/{name}/infer", infer, methods=["POST"]),
    ])


if __name__ == "__main__":
    model_name, model_path, port, threads = sys.argv[1:5]
    uvicorn.run(build(model_name, model_path, int(threads)), host="127.0.0.1", port=int(port),
                log_level="warning", access_log=False)

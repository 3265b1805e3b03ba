"""The naive baseline for benchmarks/serving.py: one request = one forward pass, JSON tensors.

What a first server written around a model usually looks like: FastAPI with pydantic request
models (the default), or the same routes on bare starlette (`starlette`, no validation layer).
V2 request/response shape, so the same load generator drives it; ONNX Runtime in the framework's
thread pool; no batching, no queue limits.
Usage: python benchmarks/naive_server.py MODEL_NAME MODEL.onnx PORT THREADS [fastapi|starlette]
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from pydantic import BaseModel

from surge.runtimes.onnx_runner import session_signature


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[InferInput]


class Model:
    """The ONNX Runtime session and its V2 metadata."""

    def __init__(self, name: str, path: str, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.name = name
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        signature = session_signature(self.session)
        self.metadata = {
            "name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                       for s in signature.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                        for s in signature.outputs],
        }

    def infer(self, inputs: list[tuple[str, list[int], list[float]]]) -> dict[str, Any]:
        feeds = {name: np.asarray(data, dtype=np.float32).reshape(shape)
                 for name, shape, data in inputs}
        results = self.session.run(None, feeds)
        outputs = [{"name": o.name, "datatype": "FP32", "shape": list(r.shape),
                    "data": r.reshape(-1).tolist()}
                   for o, r in zip(self.session.get_outputs(), results, strict=True)]
        return {"model_name": self.name, "model_version": "1", "outputs": outputs}


def fastapi_app(model: Model) -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict[str, Any]:
        return {}

    @app.get(f"/v2/models/{model.name}")
    def metadata() -> dict[str, Any]:
        return model.metadata

    @app.post(f"/v2/models/{model.name}/infer")
    def infer(request: InferRequest) -> dict[str, Any]:  # sync: runs in the thread pool
        return model.infer([(i.name, i.shape, i.data) for i in request.inputs])

    return app


def starlette_app(model: Model) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse(model.metadata)

    async def infer(request: Request) -> JSONResponse:
        body = await request.json()
        inputs = [(i["name"], i["shape"], i["data"]) for i in body["inputs"]]
        return JSONResponse(await run_in_threadpool(model.infer, inputs))

    return Starlette(routes=[
        Route("/v2/health/ready", ready),
        Route(f"/v2/models/{model.name}", metadata),
        Route(f"/v2/models/{model.name}/infer", infer, methods=["POST"]),
    ])


if __name__ == "__main__":
    model_name, model_path, port, threads = sys.argv[1:5]
    framework = sys.argv[5] if len(sys.argv) > 5 else "fastapi"
    build = {"fastapi": fastapi_app, "starlette": starlette_app}[framework]
    uvicorn.run(build(Model(model_name, model_path, int(threads))), host="127.0.0.1",
                port=int(port), log_level="warning", access_log=False)

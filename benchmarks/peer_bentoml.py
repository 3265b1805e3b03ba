"""BentoML's service around the ONNX model, for benchmarks/peer_server.py (`bentoml serve`).

BentoML imports this module in its own worker process, so the model comes from the
environment: PEER_MODEL_NAME, PEER_MODEL_PATH, PEER_THREADS. One worker; the inference route is
a batchable API (BentoML's adaptive batcher, up to MAX_BATCH requests, its default latency
budget) taking the V2 JSON body's `inputs`; the V2 readiness and metadata routes come from a
FastAPI app mounted beside it.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI
from peer_server import MAX_BATCH, metadata, session

NAME = os.environ.get("PEER_MODEL_NAME", "model")
PATH = os.environ.get("PEER_MODEL_PATH", "")
THREADS = int(os.environ.get("PEER_THREADS", "1"))

v2 = FastAPI()


@bentoml.service(workers=1)
@bentoml.asgi_app(v2, path="/v2")
class Onnx:
    def __init__(self) -> None:
        self.session = session(PATH, THREADS)
        self.input = self.session.get_inputs()[0].name
        self.meta = metadata(NAME, self.session)

    @v2.get("/health/ready")
    def ready(self) -> dict[str, Any]:
        return {}

    @v2.get(f"/models/{NAME}")
    def model(self) -> dict[str, Any]:
        return self.meta

    @bentoml.api(route=f"/v2/models/{NAME}/infer", batchable=True, max_batch_size=MAX_BATCH)
    def infer(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One V2 input tensor (one image) per request; BentoML joins the requests' lists."""
        images = [np.asarray(t["data"], np.float32).reshape(t["shape"][1:]) for t in inputs]
        logits = self.session.run(None, {self.input: np.stack(images)})[0]
        return [{"name": "logits", "datatype": "FP32", "shape": [1, *row.shape],
                 "data": row.tolist()} for row in logits]

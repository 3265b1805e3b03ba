"""Ask a model with a BF16 output for it with tritonclient, every way it can be answered:
HTTP JSON, HTTP binary, gRPC, and into system shared memory over both; print JSON results.

Runs in the tritonclient venv. Usage: triton_bf16.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

X = np.array([[0.5, 1.5, -2.0, 3.25], [1.0, 2.0, 3.0, 0.1]], dtype=np.float32)


def answer(result, kind: str) -> dict:
    """The output's datatype as the response names it, and its values as as_numpy reads them."""
    if kind == "http":
        datatype = result.get_output("output")["datatype"]
    else:
        datatype = result.get_output("output").datatype
    values = result.as_numpy("output")
    return {"datatype": datatype, "dtype": str(values.dtype), "values": values.tolist()}


def infer(module, client, model: str, binary: bool | None = None, region: bool = False):
    x = module.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    requested = (module.InferRequestedOutput("output") if binary is None
                 else module.InferRequestedOutput("output", binary_data=binary))
    if region:
        requested.set_shared_memory("out", X.size * 2)
    return client.infer(model, [x], outputs=[requested])


def in_shared_memory(module, client, model: str, kind: str) -> dict:
    key = f"/surge_test_bf16_{kind}_{os.getpid()}"
    region = shm.create_shared_memory_region("out", key, 64)
    try:
        client.register_system_shared_memory("out", key, 64)
        result = infer(module, client, model, region=True)
        if kind == "http":
            datatype = result.get_output("output")["datatype"]
        else:
            datatype = result.get_output("output").datatype
        words = shm.get_contents_as_numpy(region, np.uint16, list(X.shape))
        client.unregister_system_shared_memory("out")
        return {"datatype": datatype, "words": words.tolist()}
    finally:
        shm.destroy_shared_memory_region(region)


def main() -> None:
    http_url, grpc_url, model = sys.argv[1:4]
    http = httpclient.InferenceServerClient(http_url)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    print(json.dumps({
        "http_json": answer(infer(httpclient, http, model, binary=False), "http"),
        "http_binary": answer(infer(httpclient, http, model, binary=True), "http"),
        "grpc": answer(infer(grpcclient, grpc, model), "grpc"),
        "http_shared_memory": in_shared_memory(httpclient, http, model, "http"),
        "grpc_shared_memory": in_shared_memory(grpcclient, grpc, model, "grpc"),
        "metadata": http.get_model_metadata(model)["outputs"],
    }))


if __name__ == "__main__":
    main()

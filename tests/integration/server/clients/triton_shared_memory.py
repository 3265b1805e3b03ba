"""Drive Surge's system shared-memory extension with tritonclient (HTTP and gRPC) and
tritonclient.utils.shared_memory; print JSON results.

Runs in the tritonclient venv. Per protocol: register regions, infer with an input and both
outputs in shared memory (the other input sent as usual), status, the errors, unregister.
Usage: triton_shared_memory.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL API_KEY ("" for none)
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

X = np.array([[0.5, 1.5, -2.0, 3.25], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
N = np.array([[1, -2, 3], [40, 50, 60]], dtype=np.int64)


def error_of(call) -> str:
    try:
        call()
    except Exception as exc:  # the message and status are what the test checks
        return f"{getattr(exc, 'status', lambda: '')()}|{exc}"
    return "no error"


def infer(module, client, model: str, headers: dict, x_region: str = "x_in",
          x_size: int = X.nbytes, y_size: int = X.nbytes):
    x = module.InferInput("x", list(X.shape), "FP32")
    x.set_shared_memory(x_region, x_size)
    n = module.InferInput("n", list(N.shape), "INT64")
    n.set_data_from_numpy(N)
    y = module.InferRequestedOutput("y")
    y.set_shared_memory("out", y_size)
    m = module.InferRequestedOutput("m")
    m.set_shared_memory("out", N.nbytes, offset=64)
    return client.infer(model, [x, n], outputs=[y, m], headers=dict(headers))


def run(kind: str, url: str, model: str, headers: dict) -> dict:
    module = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(url)
    key = f"/surge_test_{kind}_{os.getpid()}"
    inputs = shm.create_shared_memory_region("x_in", key + "_in", X.nbytes)
    outputs = shm.create_shared_memory_region("out", key + "_out", 128)
    try:
        shm.set_shared_memory_region(inputs, [X])
        client.unregister_system_shared_memory(headers=headers)
        client.register_system_shared_memory("x_in", key + "_in", X.nbytes, headers=headers)
        client.register_system_shared_memory("out", key + "_out", 128, headers=headers)
        result = infer(module, client, model, headers)
        out = {
            "y": shm.get_contents_as_numpy(outputs, np.float32, [2, 4]).tolist(),
            "m": shm.get_contents_as_numpy(outputs, np.int64, [2, 3], offset=64).tolist(),
            "response": _response(kind, result),
            "status": _status(kind, client.get_system_shared_memory_status(headers=headers)),
            "cuda_status": str(client.get_cuda_shared_memory_status(headers=headers)),
            "errors": errors(module, client, model, headers, key),
        }
        client.unregister_system_shared_memory("no-such-region", headers=headers)
        client.unregister_system_shared_memory(headers=headers)
        out["status_after"] = _status(kind, client.get_system_shared_memory_status(
            headers=headers))
        return out
    finally:
        shm.destroy_shared_memory_region(inputs)
        shm.destroy_shared_memory_region(outputs)


def errors(module, client, model: str, headers: dict, key: str) -> dict:
    def register(name: str, region_key: str, size: int, offset: int = 0):
        return lambda: client.register_system_shared_memory(name, region_key, size, offset,
                                                             headers=headers)

    return {
        "unknown_region": error_of(lambda: infer(module, client, model, headers, "nope")),
        "wrong_byte_size": error_of(lambda: infer(module, client, model, headers, x_size=28)),
        "output_too_small": error_of(lambda: infer(module, client, model, headers, y_size=16)),
        "past_region": error_of(lambda: infer(module, client, model, headers, y_size=200)),
        "registered_twice": error_of(register("x_in", key + "_in", X.nbytes)),
        "missing_key": error_of(register("other", "/surge_no_such_key", 8)),
        "path_key": error_of(register("other", "/dev/../etc/passwd", 8)),
        "too_large": error_of(register("other", key + "_in", X.nbytes + 1)),
        "status_unknown": error_of(
            lambda: client.get_system_shared_memory_status("nope", headers=headers)),
        "cuda_register": error_of(lambda: client.register_cuda_shared_memory(
            "gpu", b"aGFuZGxl", 0, 8, headers=headers)),
    }


def _response(kind: str, result) -> dict:
    if kind == "http":
        return result.get_response()
    from google.protobuf import json_format

    response = result.get_response()
    return {"outputs": [json_format.MessageToDict(o) for o in response.outputs],
            "raw": [len(r) for r in response.raw_output_contents]}


def _status(kind: str, status) -> list:
    if kind == "http":
        return sorted(status, key=lambda r: r["name"])
    from google.protobuf import json_format

    regions = json_format.MessageToDict(status).get("regions", {})
    return [regions[name] for name in sorted(regions)]


def main() -> None:
    http_url, grpc_url, model, key = sys.argv[1:5]
    headers = {"authorization": f"Bearer {key}"} if key else {}
    print(json.dumps({"http": run("http", http_url, model, headers),
                      "grpc": run("grpc", grpc_url, model, headers)}))


if __name__ == "__main__":
    main()

"""tritonclient HTTP (binary) and gRPC inference against a Surge server; prints JSON results.

Runs in the tritonclient venv (numpy < 2). Usage: infer_both.py HTTP_HOST:PORT GRPC_HOST:PORT
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

X = np.array([[0.5, 1.5, -2.0, 3.25], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
N = np.array([[1, -2, 3], [40, 50, 60]], dtype=np.int64)


def main(http_url: str, grpc_url: str) -> None:
    http = httpclient.InferenceServerClient(http_url)
    inputs = [httpclient.InferInput("x", list(X.shape), "FP32"),
              httpclient.InferInput("n", list(N.shape), "INT64")]
    inputs[0].set_data_from_numpy(X, binary_data=True)
    inputs[1].set_data_from_numpy(N, binary_data=True)
    result = http.infer("tiny", inputs)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    ginputs = [grpcclient.InferInput("x", list(X.shape), "FP32"),
               grpcclient.InferInput("n", list(N.shape), "INT64")]
    ginputs[0].set_data_from_numpy(X)
    ginputs[1].set_data_from_numpy(N)
    gresult = grpc.infer("tiny", ginputs)
    print(json.dumps({
        "inputs": {"x": X.tolist(), "n": N.tolist()},
        "http": {"y": result.as_numpy("y").tolist(), "m": result.as_numpy("m").tolist()},
        "grpc": {"y": gresult.as_numpy("y").tolist(), "m": gresult.as_numpy("m").tolist()},
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

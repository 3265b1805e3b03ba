"""Two interleaved sequences of the running-sum model with tritonclient, over HTTP and gRPC
(an integer sequence_id and a string one on each), and the errors Triton's clients see; print
JSON results.

Runs in the tritonclient venv. Usage: triton_sequence.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def send(module, client, model: str, value: float, **sequence) -> float:
    x = module.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.full((1, 2), value, np.float32))
    result = client.infer(model, [x], **sequence)
    return float(result.as_numpy("y")[0][0])


def interleaved(module, client, model: str, ids: tuple) -> list:
    """Sequence a gets 1, 2, 3 and sequence b 10, 20, 30, one request of each in turn."""
    sums = []
    for step, (a, b) in enumerate(((1.0, 10.0), (2.0, 20.0), (3.0, 30.0))):
        flags = {"sequence_start": step == 0, "sequence_end": step == 2}
        sums.append([send(module, client, model, a, sequence_id=ids[0], **flags),
                     send(module, client, model, b, sequence_id=ids[1], **flags)])
    return sums


def refusal(module, client, model: str, **sequence) -> dict:
    try:
        send(module, client, model, 1.0, **sequence)
    except InferenceServerException as error:
        return {"status": str(error.status()), "message": error.message()}
    return {"status": "answered"}


def run(module, client, model: str, ids: tuple) -> dict:
    return {"sums": interleaved(module, client, model, ids),
            "no_id": refusal(module, client, model),
            "no_start": refusal(module, client, model, sequence_id=ids[0])}


def main() -> None:
    http_url, grpc_url, model = sys.argv[1:4]
    http = httpclient.InferenceServerClient(http_url)
    grpc = grpcclient.InferenceServerClient(grpc_url.removeprefix("http://"))
    config = grpc.get_model_config(model, as_json=True)["config"]
    print(json.dumps({"http": run(httpclient, http, model, (101, "http-b")),
                      "grpc": run(grpcclient, grpc, model, (201, "grpc-b")),
                      "grpc_config": config.get("sequence_batching"),
                      "grpc_inputs": [i["name"] for i in config["input"]],
                      "http_inputs": [i["name"] for i in
                                      http.get_model_metadata(model)["inputs"]]}))


if __name__ == "__main__":
    main()

"""Drive a Surge server with tritonclient (http binary, http JSON, grpc); print JSON results.

Runs in the tritonclient venv (numpy < 2); the test compares what it prints with the
in-process engine's outputs.
Usage: triton_conformance.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL API_KEY
"""

from __future__ import annotations

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format

X = np.array([[0.5, 1.5, -2.0, 3.25], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
N = np.array([[1, -2, 3], [40, 50, 60]], dtype=np.int64)


def http_infer(client: httpclient.InferenceServerClient, model: str, binary: bool,
               headers: dict) -> dict:
    inputs = [httpclient.InferInput("x", list(X.shape), "FP32"),
              httpclient.InferInput("n", list(N.shape), "INT64")]
    inputs[0].set_data_from_numpy(X, binary_data=binary)
    inputs[1].set_data_from_numpy(N, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=binary),
               httpclient.InferRequestedOutput("m", binary_data=binary)]
    result = client.infer(model, inputs, outputs=outputs, headers=headers, request_id="rq-1")
    response = result.get_response()
    return {"y": result.as_numpy("y").tolist(), "m": result.as_numpy("m").tolist(),
            "m_dtype": str(result.as_numpy("m").dtype), "id": response.get("id"),
            "version": response["model_version"]}


def run_http(url: str, model: str, key: str) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    client = httpclient.InferenceServerClient(url)
    out: dict = {
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model, headers=headers),
        "server_metadata": client.get_server_metadata(headers=headers),
        "metadata": client.get_model_metadata(model, headers=headers),
        "config": client.get_model_config(model, headers=headers),
        "binary": http_infer(client, model, True, dict(headers)),
        "json": http_infer(client, model, False, dict(headers)),  # infer() edits headers
    }
    out["stats"] = client.get_inference_statistics(model, headers=headers)
    out["index"] = client.get_model_repository_index(headers=headers)
    client.unload_model(model, headers=headers)
    out["ready_after_unload"] = client.is_model_ready(model, headers=headers)
    client.load_model(model, headers=headers)
    out["ready_after_load"] = client.is_model_ready(model, headers=headers)
    try:
        client.get_model_metadata("no-such-model", headers=headers)
        out["unknown_model"] = "no error"
    except Exception as exc:  # the exception type is the point of the check
        out["unknown_model"] = str(getattr(exc, "status", lambda: "")())
    return out


def run_grpc(url: str, model: str, key: str) -> dict:
    headers = {"authorization": f"Bearer {key}"}
    client = grpcclient.InferenceServerClient(url)

    def as_dict(message: object) -> dict:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    inputs = [grpcclient.InferInput("x", list(X.shape), "FP32"),
              grpcclient.InferInput("n", list(N.shape), "INT64")]
    inputs[0].set_data_from_numpy(X)
    inputs[1].set_data_from_numpy(N)
    result = client.infer(model, inputs, headers=headers, request_id="rq-2")
    out: dict = {
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model, headers=headers),
        "server_metadata": as_dict(client.get_server_metadata(headers=headers)),
        "metadata": as_dict(client.get_model_metadata(model, headers=headers)),
        "config": as_dict(client.get_model_config(model, headers=headers)),
        "infer": {"y": result.as_numpy("y").tolist(), "m": result.as_numpy("m").tolist(),
                  "m_dtype": str(result.as_numpy("m").dtype),
                  "id": result.get_response().id},
        "stats": as_dict(client.get_inference_statistics(model, headers=headers)),
        "index": as_dict(client.get_model_repository_index(headers=headers)),
    }
    client.unload_model(model, headers=headers)
    out["ready_after_unload"] = client.is_model_ready(model, headers=headers)
    client.load_model(model, headers=headers)
    out["ready_after_load"] = client.is_model_ready(model, headers=headers)
    try:
        client.get_model_metadata(model)  # no API key
        out["no_key"] = "no error"
    except grpcclient.InferenceServerException as exc:
        out["no_key"] = exc.status()
    out["stream"] = run_stream(client, model, inputs, headers)
    return out


def run_stream(client: grpcclient.InferenceServerClient, model: str, inputs: list,
               headers: dict) -> list:
    """Three requests on one ModelStreamInfer stream, the second for a model that is not there:
    what the callback got, in the order it got it."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)),
                        headers=headers)
    for i, name in enumerate([model, "no-such-model", model]):
        client.async_stream_infer(name, inputs, request_id=f"s-{i}")
    got = [answers.get(timeout=60) for _ in range(3)]
    client.stop_stream()
    return [{"error": str(error)} if error is not None else
            {"id": result.get_response().id, "y": result.as_numpy("y").tolist()}
            for result, error in got]


def main() -> None:
    http_url, grpc_url, model, key = sys.argv[1:5]
    print(json.dumps({"inputs": {"x": X.tolist(), "n": N.tolist()},
                      "http": run_http(http_url, model, key),
                      "grpc": run_grpc(grpc_url, model, key)}))


if __name__ == "__main__":
    main()

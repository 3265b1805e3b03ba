"""Send each model its inputs with tritonclient over HTTP (binary) and gRPC; save the outputs.

Runs in the tritonclient venv. Usage: infer_formats.py HTTP_HOST:PORT GRPC_HOST:PORT JOBS.json OUT.npz
where JOBS.json is a list of {"model", "input", "output", "inputs": path of an .npy}.
Saves `http/<model>` and `grpc/<model>` arrays and each model's metadata platform.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def main(http_url: str, grpc_url: str, jobs_path: str, out: str) -> None:
    http = httpclient.InferenceServerClient(http_url)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    arrays: dict[str, np.ndarray] = {}
    with open(jobs_path) as handle:
        jobs = json.load(handle)
    for job in jobs:
        x = np.load(job["inputs"])
        model, name, output = job["model"], job["input"], job["output"]
        h = httpclient.InferInput(name, list(x.shape), "FP32")
        h.set_data_from_numpy(x, binary_data=True)
        arrays[f"http/{model}"] = http.infer(model, [h]).as_numpy(output)
        g = grpcclient.InferInput(name, list(x.shape), "FP32")
        g.set_data_from_numpy(x)
        arrays[f"grpc/{model}"] = grpc.infer(model, [g]).as_numpy(output)
        arrays[f"platform/{model}"] = np.array(http.get_model_metadata(model)["platform"])
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:5])

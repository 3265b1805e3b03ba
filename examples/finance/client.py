"""Score loan applications with the served credit models (trees and network, same columns).

    surge serve examples/finance/repository &      # or out/finance after training
    .venv/bin/python examples/finance/client.py --rows 5
"""

from __future__ import annotations

import argparse

import httpx

from surge.evaluate.harness import load_dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args()
    dataset = load_dataset("hmda-credit")
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": [args.rows],
                        "data": column[:args.rows].tolist()}
                       for name, column in dataset.inputs.items()]}
    assert dataset.labels is not None
    for model in ("credit-gbm", "credit-mlp"):
        response = httpx.post(f"{args.url}/v2/models/{model}/infer", json=body, timeout=30)
        if response.status_code != 200:
            print(f"{model}: error {response.status_code}: {response.json().get('error')}")
            return 1
        scores = response.json()["outputs"][0]["data"]
        print(model, " ".join(f"{p:.3f}" for p in scores))
    print("denied    ", " ".join(f"{int(y):5d}" for y in dataset.labels[:args.rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Score one user against N candidate items with one request and print the top 10.

    surge serve examples/recommendation/repository &   # or out/recommendation
    .venv/bin/python examples/recommendation/client.py --user 7 --candidates 100
"""

from __future__ import annotations

import argparse

import httpx
import numpy as np

from surge_examples.recommendation.simulator import make_world


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="dlrm")
    parser.add_argument("--user", type=int, default=7)
    parser.add_argument("--candidates", type=int, default=100)
    args = parser.parse_args()
    world = make_world()
    items = np.random.default_rng(args.user).choice(world.items, args.candidates, replace=False)
    rows = world.rows(np.full(args.candidates, args.user), items)
    body = {"inputs": [{"name": name, "datatype": "INT64" if a.dtype == np.int64 else "FP32",
                        "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                       for name, a in rows.items()]}
    response = httpx.post(f"{args.url}/v2/models/{args.model}/infer", json=body, timeout=30)
    if response.status_code != 200:
        print(f"error {response.status_code}: {response.json().get('error')}")
        return 1
    scores = np.array(response.json()["outputs"][0]["data"])
    truth = world.click_probability(rows["user"], items)
    for rank, index in enumerate(np.argsort(-scores)[:10], start=1):
        print(f"{rank:2d}. item {items[index]:4d}  predicted {scores[index]:.3f}  "
              f"true {truth[index]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

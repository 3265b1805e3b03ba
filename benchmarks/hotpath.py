"""Front-end CPU per request on the Python hot path, without sockets: the V2 HTTP app, the
engine's driver and scheduler, the hand-off into shared memory and back, the response encode.

The app is called as ASGI directly by closed-loop client coroutines in the same process, over
a real Engine whose worker processes run a model with ResNet-18 3x64x64's tensors (input
[N, 3, 64, 64] FP32, output [N, 1000] FP32) but almost no compute. CPU time is this process's
own (`time.process_time`), so the figure holds on a busy machine where wall-clock rates do
not: it is what the front end spends per request above uvloop and the kernel's sockets.
`--src` runs the same measurement against another source tree (another checkout's `src`), in
alternation with this one, for a before/after side by side.

    .venv/bin/python benchmarks/hotpath.py [--clients 64] [--seconds 4] [--rounds 3] [--src DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "max_batch_size: 32\ninstances: 2\nthreads: 1\nbatching: {max_queue_delay_ms: 2}\n"


def write_model(path: Path) -> None:
    """mean over H, W then a [3, 1000] MatMul: ResNet-18 3x64x64's tensor sizes, no compute."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(
        np.random.default_rng(0).random((3, 1000), dtype=np.float32), "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["logits"])],
        "tensors", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1000])],
        [weights, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def request_body() -> tuple[bytes, int]:
    from surge.bench.payload import InputSpec, http_body

    image = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    body, header = http_body({"image": image}, [InputSpec("image", "FP32", (-1, 3, 64, 64))],
                             binary=True)
    assert header is not None
    return body, header


async def client(app: Any, body: bytes, header: int, until: float, counts: list[int]) -> None:
    scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer",
             "headers": [(b"content-length", str(len(body)).encode()),
                         (b"content-type", b"application/octet-stream"),
                         (b"inference-header-content-length", str(header).encode())],
             "client": ("127.0.0.1", 1)}
    never: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    while time.monotonic() < until:
        first = True
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            return await never  # the client stays connected

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        counts[0 if status == 200 else 1] += 1


async def measure(clients: int, seconds: float) -> dict[str, float]:
    from surge.engine import Engine
    from surge.repository import Repository
    from surge.server.app import V2App

    with tempfile.TemporaryDirectory(prefix="surge-hotpath-") as tmp:
        (Path(tmp) / "m" / "1").mkdir(parents=True)
        write_model(Path(tmp) / "m" / "1" / "model.onnx")
        (Path(tmp) / "m" / "config.yaml").write_text(CONFIG)
        engine = Engine(Repository(tmp))
        await engine.start()
        try:
            app = V2App(engine)
            body, header = request_body()
            counts = [0, 0]
            warm = time.monotonic() + 1.0
            await asyncio.gather(*(client(app, body, header, warm, [0, 0]) for _ in range(8)))
            cpu, wall = time.process_time(), time.monotonic()
            until = wall + seconds
            await asyncio.gather(*(client(app, body, header, until, counts)
                                   for _ in range(clients)))
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        finally:
            await engine.stop(5.0)
    return {"requests": counts[0], "errors": counts[1], "cpu_s": cpu, "wall_s": wall,
            "cpu_us_per_request": cpu / max(1, counts[0]) * 1e6}


def one(args: argparse.Namespace) -> None:
    import uvloop

    print(json.dumps(uvloop.run(measure(args.clients, args.seconds))))


def run_tree(src: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, __file__, "--one", "--clients", str(args.clients),
               "--seconds", str(args.seconds)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", type=Path, help="another source tree to compare against")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hotpath.json")
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    trees = {"this tree": ROOT / "src"} | ({"--src": args.src.resolve()} if args.src else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):  # alternate, so drifting load hits both alike
        for name, src in trees.items():
            runs[name].append(run_tree(src, args))
    summary = {name: float(np.median([r["cpu_us_per_request"] for r in rows]))
               for name, rows in runs.items()}
    for name, rows in runs.items():
        print(f"{name:10} {summary[name]:7.1f} us/request (median of "
              f"{[round(r['cpu_us_per_request'], 1) for r in rows]})")
    args.out.write_text(json.dumps({"clients": args.clients, "load_average": os.getloadavg(),
                                    "median_cpu_us_per_request": summary, "runs": runs,
                                    "trees": {k: str(v) for k, v in trees.items()}}, indent=2))


if __name__ == "__main__":
    main()

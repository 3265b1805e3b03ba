"""The response cache: latency of a request the model computes (a miss) beside that of the
same request answered from the cache (a hit), over HTTP JSON on one server.

The server is a `surge serve` process with `--response-cache-bytes 64MB`; the model, served
with `response_cache: true`, is an ONNX stack of `--layers` 512x512 MatMul + Relu on FP32
[-1, 512], about a millisecond of compute per request on one thread. One client sends
requests one after another: first `--requests` distinct ones (every one a miss), then as many
of one request whose answer is stored (every one a hit). The statistics' cache_hit and
cache_miss counts are printed to show which was which.

    .venv/bin/python benchmarks/response_cache.py [--requests 300] [--layers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import stop, wait_ready  # noqa: E402

from surge.bench.clients import HttpTransport  # noqa: E402
from surge.bench.payload import http_request  # noqa: E402
from surge.server.sockets import unused_port  # noqa: E402

WIDTH = 512
console = Console()


def write_model(root: Path, layers: int) -> Path:
    """`layers` MatMul + Relu on FP32 [-1, WIDTH], served with the response cache."""
    rng = np.random.default_rng(0)
    nodes, weights, last = [], [], "x"
    for i in range(layers):
        weights.append(numpy_helper.from_array(
            (rng.standard_normal((WIDTH, WIDTH)) / WIDTH ** 0.5).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"h{i}"]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}" if i < layers - 1 else "y"])]
        last = f"r{i}"
    graph = helper.make_graph(
        nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", WIDTH])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "stack" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "stack" / "1" / "model.onnx"))
    (root / "stack" / "config.yaml").write_text(
        "max_batch_size: 8\ninstances: 1\nthreads: 1\nbatching: {max_queue_delay_ms: 0}\n"
        "response_cache: true\n")
    return root


def body(value: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH],
                        "data": [value] * WIDTH}]}


def latencies(http: str, values: list[float]) -> list[float]:
    """Milliseconds of each request, sent one after another on one keep-alive connection
    (Surge's load-generator client: the whole request in one write)."""
    host, port = http.removeprefix("http://").rsplit(":", 1)
    payloads = [http_request(host, "/v2/models/stack/infer", json.dumps(body(v)).encode(), None)
                for v in values]

    async def run() -> list[float]:
        transport, took = HttpTransport(host, int(port)), []
        try:
            for payload in payloads:
                started = time.perf_counter()
                status = await transport.send(payload)
                took.append((time.perf_counter() - started) * 1e3)
                if status != "ok":
                    raise RuntimeError(f"a request failed: {status}")
        finally:
            await transport.close()
        return took

    return asyncio.run(run())


def row(table: Table, name: str, took: list[float]) -> None:
    ordered = sorted(took)
    table.add_row(name, f"{statistics.median(ordered):.3f}",
                  f"{ordered[int(0.99 * (len(ordered) - 1))]:.3f}", f"{statistics.mean(ordered):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repo = write_model(Path(folder), args.layers)
        port = unused_port()
        server = subprocess.Popen(
            [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
             "--http-port", str(port), "--grpc-port", str(unused_port()),
             "--metrics-port", str(unused_port()),
             "--response-cache-bytes", "64MB", "--log-level", "warning"])
        http = f"http://127.0.0.1:{port}"
        try:
            wait_ready(http, server)
            latencies(http, [-1.0] * 20)  # warm the model, and store the answer of -1
            misses = latencies(http, [float(i) for i in range(args.requests)])
            hits = latencies(http, [-1.0] * args.requests)
            stats = httpx.get(f"{http}/v2/models/stack/stats", timeout=30).json()
        finally:
            stop(server)
    inference = stats["model_stats"][0]["inference_stats"]
    table = Table(title=f"HTTP JSON, FP32 [1, {WIDTH}], {args.layers} layers (ms)")
    for column in ("", "p50", "p99", "mean"):
        table.add_column(column)
    row(table, "miss (computed)", misses)
    row(table, "hit (from the cache)", hits)
    console.print(table)
    console.print(f"cache_hit {inference['cache_hit']['count']}, "
                  f"cache_miss {inference['cache_miss']['count']}")


if __name__ == "__main__":
    main()

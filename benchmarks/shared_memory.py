"""System shared memory against tensors in the request: front-end CPU per request and
requests/s over binary HTTP, HTTP with system shared memory, gRPC (raw contents) and gRPC with
system shared memory, side by side on one server.

The model is an ONNX Identity on a ResNet-sized input, FP32 [-1, 3, 64, 64] (48 KiB in and 48
KiB out per request), so that the front end's handling of the tensor bytes is most of the
work. The shared-memory modes name one registered input region (written once) and an output
slot per client in a second region: the request and the answer carry only JSON or a small
protobuf. CPU seconds are the server process's own (/proc/<pid>/stat; the worker that runs the
model is not counted), read around each level; the load generator is Surge's closed loop
(`surge.bench`), its HTTP and HTTP/2 clients sending prepared bytes.

    .venv/bin/python benchmarks/shared_memory.py [--duration 5] [--clients 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("http", "http-shm", "grpc", "grpc-shm")
SHAPE = [1, 3, 64, 64]
BYTES = int(np.prod(SHAPE)) * 4
console = Console()

sys.path.insert(0, str(ROOT / "benchmarks"))
from frontend import cpu_seconds, write_repository  # noqa: E402
from serving import stop, wait_ready  # noqa: E402

from surge.bench.clients import HttpTransport  # noqa: E402
from surge.bench.grpc_client import LeanGrpcTransport  # noqa: E402
from surge.bench.loadgen import run_level  # noqa: E402
from surge.bench.payload import http_request  # noqa: E402
from surge.protocol.grpc_gen import grpc_service_pb2 as pb  # noqa: E402
from surge.server.sockets import unused_port  # noqa: E402


def _place(region: str, offset: int = 0) -> dict[str, Any]:
    return {"shared_memory_region": region, "shared_memory_byte_size": BYTES,
            "shared_memory_offset": offset}


def http_payloads(mode: str, host: str, clients: int, data: bytes) -> list[bytes]:
    path = "/v2/models/noop/infer"
    tensor = {"name": "x", "datatype": "FP32", "shape": SHAPE}
    if mode == "http":
        head = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": BYTES}}],
                             "parameters": {"binary_data_output": True}})
        return [http_request(host, path, head + data, len(head))]
    return [http_request(host, path, orjson.dumps({
        "inputs": [{**tensor, "parameters": _place("input")}],
        "outputs": [{"name": "y", "parameters": _place("output", slot * BYTES)}]}), None)
        for slot in range(clients)]


def grpc_payloads(mode: str, clients: int, data: bytes) -> list[bytes]:
    payloads = []
    for slot in range(clients if mode == "grpc-shm" else 1):
        message = pb.ModelInferRequest(model_name="noop")
        tensor = message.inputs.add(name="x", datatype="FP32", shape=SHAPE)
        if mode == "grpc":
            message.raw_input_contents.append(data)
        else:
            for key, value in _place("input").items():
                _set(tensor.parameters[key], value)
            output = message.outputs.add(name="y")
            for key, value in _place("output", slot * BYTES).items():
                _set(output.parameters[key], value)
        payloads.append(message.SerializeToString())
    return payloads


def _set(parameter: Any, value: object) -> None:
    if isinstance(value, str):
        parameter.string_param = value
    else:
        parameter.int64_param = value


def drive(mode: str, ports: tuple[int, int], clients: int, duration: float,
          data: bytes) -> Any:
    host = "127.0.0.1"
    if mode.startswith("http"):
        transport: Any = HttpTransport(host, ports[0])
        payloads = http_payloads(mode, f"{host}:{ports[0]}", clients, data)
    else:
        transport = LeanGrpcTransport(host, ports[1], connections=1)
        payloads = grpc_payloads(mode, clients, data)

    async def level() -> Any:
        try:
            return await run_level(transport, payloads, concurrency=clients,
                                   duration_s=duration, warmup_s=1.0)
        finally:
            await transport.close()

    return asyncio.run(level())


def measure(mode: str, server: int, ports: tuple[int, int], args: argparse.Namespace,
            data: bytes, round_index: int) -> dict[str, Any]:
    before, started = cpu_seconds([server]), time.perf_counter()
    run = drive(mode, ports, args.clients, args.duration, data)
    wall = time.perf_counter() - started
    front_cpu = cpu_seconds([server]) - before
    sent = run.requests * (1 + 1.0 / args.duration)  # the warm-up second is in the CPU delta
    row = {"mode": mode, "round": round_index, "requests_per_s": run.throughput,
           "p50_ms": run.p50_ms, "p99_ms": run.p99_ms, "errors": sum(run.errors.values()),
           "front_end_cpu_us_per_request": front_cpu / max(sent, 1) * 1e6,
           "front_end_cores": front_cpu / wall, "client_cpu_share": run.client_cpu_share,
           "load_average": os.getloadavg()[0]}
    console.log(f"{mode}: {row['requests_per_s']:,.0f} req/s, front end "
                f"{row['front_end_cpu_us_per_request']:.0f} us/req, errors {row['errors']}")
    return row


def register(url: str, name: str, block: shared_memory.SharedMemory) -> None:
    answer = httpx.post(f"{url}/v2/systemsharedmemory/region/{name}/register", timeout=10,
                        json={"key": "/" + block.name.lstrip("/"), "offset": 0,
                              "byte_size": block.size})
    answer.raise_for_status()


def run(repo: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    ports = (unused_port(), unused_port())
    command = [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
               "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
               "--metrics-port", str(unused_port())]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{ports[0]}"
    data = np.random.default_rng(0).random(SHAPE, dtype=np.float32).tobytes()
    source = shared_memory.SharedMemory(create=True, size=BYTES)
    target = shared_memory.SharedMemory(create=True, size=BYTES * args.clients)
    try:
        source.buf[:BYTES] = data
        wait_ready(url, process)
        register(url, "input", source)
        register(url, "output", target)
        rows = []
        for round_index in range(args.repeat):  # rounds interleaved: the load drifts
            rows += [measure(mode, process.pid, ports, args, data, round_index)
                     for mode in args.modes.split(",")]
        return rows
    finally:
        stop(process)
        for block in (source, target):
            block.close()
            block.unlink()


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per mode: medians over the rounds, and the ratio of front-end CPU to binary HTTP's."""
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        group = [r for r in rows if r["mode"] == mode]
        summary[mode] = {key: statistics.median(r[key] for r in group) for key in (
            "requests_per_s", "front_end_cpu_us_per_request", "p50_ms", "p99_ms")}
        summary[mode]["errors"] = sum(r["errors"] for r in group)
        summary[mode]["rounds"] = len(group)
    base = summary.get("http", {}).get("front_end_cpu_us_per_request")
    for entry in summary.values():
        entry["over_binary_http"] = entry["front_end_cpu_us_per_request"] / base if base else 0
    return summary


def print_table(summary: dict[str, dict[str, float]]) -> None:
    table = Table(title=f"FP32 {SHAPE} in and out, no-op model (medians)")
    for column in ("mode", "req/s", "front-end us/req", "/ binary HTTP", "p50 ms", "p99 ms",
                   "errors", "rounds"):
        table.add_column(column, justify="right")
    for mode, entry in summary.items():
        table.add_row(mode, f"{entry['requests_per_s']:,.0f}",
                      f"{entry['front_end_cpu_us_per_request']:.0f}",
                      f"{entry['over_binary_http']:.2f}", f"{entry['p50_ms']:.2f}",
                      f"{entry['p99_ms']:.2f}", str(int(entry["errors"])),
                      str(int(entry["rounds"])))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per mode")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop concurrency")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over every mode")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS / "shared_memory.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="surge-shm-bench-") as tmp:
        repo = write_repository(Path(tmp) / "repo", args.max_batch, args.max_queue_delay_ms,
                                tuple(SHAPE[1:]))
        rows = run(repo, args)
    summary = summarize(rows)
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "shape": SHAPE, "cores": os.cpu_count(), "clients": args.clients,
        "duration_s": args.duration, "max_batch": args.max_batch,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rows": rows, "summary": summary}, indent=2))
    console.print(f"load average {os.getloadavg()}; wrote {args.out}")


if __name__ == "__main__":
    main()

"""Front-end cost per request: requests/s and front-end CPU per request for a no-op model.

The model is an ONNX Identity on FP32 [-1, 4], so small that the front end is the
bottleneck. For each server configuration (`surge serve --frontends N` for each N of
`--frontends`, and each gRPC server variant of `--grpc-variants`, see
benchmarks/grpc_variants.py), this process drives it with Surge's closed-loop load generator
over HTTP JSON, binary HTTP and gRPC, and reads the CPU seconds of the front-end processes
from /proc/<pid>/stat before and after each level (worker processes, which run the model,
are not counted; with several front ends the supervisor and every front end are). Ratios are
computed from figures measured in this run only; the load average is recorded beside them.

    .venv/bin/python benchmarks/frontend.py [--duration 5] [--clients 16] [--frontends 1,2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import onnx
from onnx import TensorProto, helper
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TICKS = os.sysconf("SC_CLK_TCK")
PROTOCOLS = ("http-json", "http", "grpc")
console = Console()
_RUNS = itertools.count()  # one id per server started: ratios compare rows of one server

sys.path.insert(0, str(ROOT / "benchmarks"))
from serving import stop, wait_ready  # noqa: E402

from surge.server.sockets import unused_port  # noqa: E402


def write_repository(root: Path, max_batch: int = 8, delay_ms: float = 0.5,
                     row: tuple[int, ...] = (4,)) -> Path:
    """A repository with `noop`: y = x on FP32 [-1, *row], one single-threaded instance."""
    dims: list[int | str] = ["batch", *row]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "noop", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory = root / "noop" / "1"
    directory.mkdir(parents=True)
    onnx.save(model, str(directory / "model.onnx"))
    (root / "noop" / "config.yaml").write_text(
        f"max_batch_size: {max_batch}\ninstances: 1\nthreads: 1\n"
        f"batching: {{max_queue_delay_ms: {delay_ms}}}\nqueue: {{max_size: 4096}}\n")
    return root


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def front_end_pids(server: int) -> list[int]:
    """The server process and, under `--frontends N`, its front-end children (not workers:
    a front end's own children run the model)."""
    fronts = [pid for pid in children(server) if b"surge.server.frontends" in _cmdline(pid)
              or b"multiprocessing.spawn" in _cmdline(pid)]
    return [server, *[pid for pid in fronts if b"resource_tracker" not in _cmdline(pid)]]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def batch_totals(metrics: str) -> tuple[float, float]:
    """(items, batches) computed so far for `noop`, summed over the front ends."""
    totals = {"surge_batch_size_sum": 0.0, "surge_batch_size_count": 0.0}
    for line in httpx.get(metrics, timeout=10).text.splitlines():
        name = line.split("{", 1)[0]
        if name in totals and 'model="noop"' in line:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["surge_batch_size_sum"], totals["surge_batch_size_count"]


def measure(url: str, grpc_target: str, metrics: str, server: int, clients: int,
            duration: float, label: str,
            protocols: tuple[str, ...] = PROTOCOLS) -> list[dict[str, Any]]:
    from surge.bench import run_bench

    rows = []
    run_id = next(_RUNS)
    pids = front_end_pids(server)
    before = cpu_seconds(pids)
    time.sleep(2.0)
    idle_cores = (cpu_seconds(pids) - before) / 2.0  # a poller that spins shows here
    for entry in protocols:
        protocol, _, client = entry.partition(":")  # "grpc:grpcio": grpc.aio's client
        target = grpc_target if protocol == "grpc" else url
        pids = front_end_pids(server)
        items, batches = batch_totals(metrics)
        before, started = cpu_seconds(pids), time.perf_counter()
        report = run_bench(target, "noop", [clients], duration, protocol, warmup_s=1.0,
                           grpc_client=client or "surge")
        wall = time.perf_counter() - started
        front_cpu = cpu_seconds(pids) - before
        items_after, batches_after = batch_totals(metrics)
        run = report.runs[0]
        # The warm-up second is inside the CPU delta: count its requests too (estimate).
        sent = run.requests * (1 + 1.0 / duration)
        row = {"server": label, "protocol": entry, "front_ends": len(pids) - (len(pids) > 1),
               "requests_per_s": run.throughput, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms,
               "errors": sum(run.errors.values()), "client_cpu_share": run.client_cpu_share,
               "client_cpu_us_per_request": run.client_cpu_share / max(run.throughput, 1e-9)
               * 1e6,
               "front_end_cpu_us_per_request": front_cpu / max(sent, 1) * 1e6,
               "mean_batch": (items_after - items) / max(batches_after - batches, 1),
               "front_end_cores": front_cpu / wall, "idle_front_end_cores": idle_cores,
               "load_average": os.getloadavg()[0], "run": run_id}
        rows.append(row)
        console.log(f"{label} {entry}: {row['requests_per_s']:,.0f} req/s, front end "
                    f"{row['front_end_cpu_us_per_request']:.0f} us/req, client "
                    f"{row['client_cpu_us_per_request']:.0f} us/req, errors {row['errors']}")
    return rows


def run_server(command: list[str], clients: int, duration: float, label: str,
               protocols: tuple[str, ...] = PROTOCOLS) -> list[dict]:
    http, grpc_port, metrics = unused_port(), unused_port(), unused_port()
    command = [*command, "--http-port", str(http), "--grpc-port", str(grpc_port),
               "--metrics-port", str(metrics)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    try:
        wait_ready(url, process)
        time.sleep(1.0)  # every front end ready, not only the first to answer
        return measure(url, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics}/metrics",
                       process.pid, clients, duration, label, protocols)
    finally:
        stop(process)


def surge_command(repo: Path, frontends: int) -> list[str]:
    return [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
            "--frontends", str(frontends)]


def variant_command(repo: Path, variant: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "grpc_variants.py"), variant, str(repo)]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's front-end CPU per request over binary HTTP's on the same server run."""
    binary = {r["run"]: r["front_end_cpu_us_per_request"] for r in rows
              if r["protocol"] == "http"}
    for r in rows:
        base = binary.get(r["run"])
        r["over_binary_http"] = r["front_end_cpu_us_per_request"] / base if base else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per server and protocol: the median over rounds of us/request and of the ratio."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['server']} {r['protocol']}", []).append(r)
    return {key: {
        "rounds": len(group),
        "front_end_cpu_us_per_request": statistics.median(
            r["front_end_cpu_us_per_request"] for r in group),
        "over_binary_http": statistics.median(
            r["over_binary_http"] or float("nan") for r in group),
        "requests_per_s": statistics.median(r["requests_per_s"] for r in group),
        "mean_batch": statistics.median(r["mean_batch"] for r in group),
    } for key, group in groups.items()}


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="front-end cost per request, no-op model")
    for column in ("server", "protocol", "req/s", "p50 ms", "p99 ms", "errors",
                   "front-end us/req", "/ binary HTTP", "batch", "front-end cores", "load"):
        table.add_column(column, justify="right")
    for r in rows:
        ratio = r["over_binary_http"]
        table.add_row(r["server"], r["protocol"], f"{r['requests_per_s']:,.0f}",
                      f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", str(r["errors"]),
                      f"{r['front_end_cpu_us_per_request']:.0f}",
                      "" if ratio is None else f"{ratio:.2f}", f"{r['mean_batch']:.2f}",
                      f"{r['front_end_cores']:.2f}", f"{r['load_average']:.1f}")
    console.print(table)


def run_round(repo: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for count in [int(n) for n in args.frontends.split(",") if n]:
        rows += run_server(surge_command(repo, count), args.clients, args.duration,
                           f"frontends={count}", tuple(args.protocols.split(",")))
    for variant in [v for v in args.grpc_variants.split(",") if v]:
        try:
            rows += run_server(variant_command(repo, variant), args.clients, args.duration,
                               f"grpc:{variant}", tuple(args.variant_protocols.split(",")))
        except Exception as exc:  # one broken variant must not lose the others' figures
            console.log(f"grpc:{variant} failed: {exc}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per protocol")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop concurrency")
    parser.add_argument("--frontends", default="1,2", help="front-end counts ('' to skip)")
    parser.add_argument("--grpc-variants", default="",
                        help="gRPC server variants of benchmarks/grpc_variants.py (a,b)")
    parser.add_argument("--variant-protocols", default="http,grpc",
                        help="protocols measured on each gRPC variant's server")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS),
                        help="measured on each --frontends server; grpc:grpcio is gRPC from "
                        "grpc.aio's client instead of the load generator's own")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every server")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="the model's max_batch_size (1: every protocol pays one batch "
                        "per request, which isolates the protocol's own cost)")
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.5,
                        help="the model's batching delay (longer than the arrival gap: "
                        "requests that arrive spread out are batched too)")
    parser.add_argument("--out", type=Path, default=RESULTS / "frontend.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="surge-frontend-bench-") as tmp:
        repo = write_repository(Path(tmp) / "repo", args.max_batch, args.max_queue_delay_ms)
        for _ in range(args.repeat):  # rounds interleaved: the load drifts over a run
            rows += run_round(repo, args)
    add_ratios(rows)
    print_table(rows)
    summary = summarize(rows)
    for key, entry in summary.items():
        console.print(f"{key}: median {entry['requests_per_s']:,.0f} req/s, "
                      f"{entry['front_end_cpu_us_per_request']:.0f} us/req, "
                      f"{entry['over_binary_http']:.2f} x binary HTTP, batch "
                      f"{entry['mean_batch']:.2f} over {entry['rounds']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "cores": os.cpu_count(), "clients": args.clients, "duration_s": args.duration,
        "max_batch": args.max_batch, "max_queue_delay_ms": args.max_queue_delay_ms,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rows": rows, "summary": summary}, indent=2))
    console.print(f"load average {os.getloadavg()}; wrote {args.out}")


if __name__ == "__main__":
    main()

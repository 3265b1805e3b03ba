"""Serving benchmark: in-process ceiling vs Surge (binary HTTP, gRPC) vs a naive server, one run.

For each model (ResNet-18 at 3x224x224 and 3x64x64 with random weights, the fashion CNN):
1. ceiling: the ONNX Runtime session's best throughput in this process over batch sizes and
   thread counts on the same cores;
2. `surge serve` in a subprocess, driven by Surge's load generator (this process) over binary
   HTTP and gRPC at each concurrency, in the layout `--layout` names (default spread: one
   single-threaded instance per core, max batch split between them; ceiling: one instance
   with the ceiling's threads); the front end's CPU time per request is read from
   /proc/<pid>/stat of the server process (workers are its children and are not counted);
3. the naive baseline (benchmarks/naive_server.py: FastAPI with pydantic request models, JSON,
   one forward per request), and the same routes on bare starlette for reference.
Ratios are computed from numbers measured in this run only.

    .venv/bin/python benchmarks/serving.py [--duration 5] [--models resnet224,resnet64,fashion]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from surge.server.process import Endpoints, read_endpoints
from surge.server.sockets import unused_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CORES = os.cpu_count() or 2
TICKS = os.sysconf("SC_CLK_TCK")
console = Console()


@dataclass(frozen=True)
class Case:
    name: str
    build: str  # resnet | fashion
    size: int  # image side
    channels: int
    max_batch: int
    delay_ms: float
    ceiling_batches: tuple[int, ...]


CASES = {
    "resnet224": Case("resnet224", "resnet", 224, 3, 32, 5.0, (1, 4, 8, 16, 32)),
    "resnet64": Case("resnet64", "resnet", 64, 3, 64, 2.0, (1, 8, 16, 32, 64)),
    "fashion": Case("fashion", "fashion", 28, 1, 64, 1.0, (1, 16, 32, 64)),
}


@dataclass
class CaseResult:
    name: str
    ceiling: dict[str, Any] = field(default_factory=dict)
    surge: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    naive: list[dict[str, Any]] = field(default_factory=list)  # FastAPI: the baseline
    naive_starlette: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


# -- models ---------------------------------------------------------------------------------
def export_model(case: Case, path: Path) -> Path:
    import torch

    from surge.export import export_onnx

    torch.manual_seed(0)
    if case.build == "fashion":
        trained = ROOT / "examples" / "repository" / "fashion" / "1" / "model.onnx"
        if trained.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(trained.read_bytes())
            return path
        from surge_examples.fashion.model import fashion_cnn

        module: torch.nn.Module = fashion_cnn()
    else:
        from surge.zoo.resnet import resnet18

        module = resnet18()
    example = torch.rand(2, case.channels, case.size, case.size)
    return export_onnx(module, (example,), path, ["image"], ["logits"])


def measure_ceiling(case: Case, path: Path, seconds: float = 1.5) -> dict[str, Any]:
    """Best items/s of the bare ORT session over batch sizes and thread counts."""
    import onnxruntime as ort

    best: dict[str, Any] = {"items_per_s": 0.0}
    batch_ms: dict[str, float] = {}
    for threads in sorted({1, CORES}):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for batch in case.ceiling_batches:
            x = np.random.default_rng(0).random((batch, case.channels, case.size, case.size),
                                                dtype=np.float32)
            session.run(None, {name: x})
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or runs < 3:
                session.run(None, {name: x})
                runs += 1
            elapsed = time.perf_counter() - start
            rate = runs * batch / elapsed
            batch_ms[f"b{batch}_t{threads}"] = elapsed / runs * 1000
            console.log(f"  ceiling {case.name}: batch {batch} threads {threads}: "
                        f"{rate:,.1f} items/s ({elapsed / runs * 1000:.2f} ms/batch)")
            if rate > best["items_per_s"]:
                best = {"items_per_s": rate, "batch": batch, "threads": threads}
    # One worker process running `threads` intra-op threads; instances x threads fit the cores.
    best["instances"] = max(1, CORES // best["threads"])
    best["batch_ms"] = batch_ms
    best["max_batch_ms"] = batch_ms.get(f"b{case.max_batch}_t{best['threads']}")
    return best


class CeilingProbe:
    """The in-process ceiling at its best setting, re-measured around every load level.

    The machine is shared: a ceiling measured minutes before a level says little about the
    cores available during it, so each ratio uses the mean of a probe just before and just
    after its level.
    """

    def __init__(self, case: Case, path: Path, batch: int, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.feeds = {self.session.get_inputs()[0].name: np.random.default_rng(0).random(
            (batch, case.channels, case.size, case.size), dtype=np.float32)}
        self.batch = batch

    def __call__(self, seconds: float = 1.5) -> float:
        self.session.run(None, self.feeds)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or runs < 2:
            self.session.run(None, self.feeds)
            runs += 1
        return runs * self.batch / (time.perf_counter() - start)


def serving_layout(case: Case, ceiling: dict[str, Any], layout: str) -> dict[str, Any]:
    """How the server runs the model: instances x threads and the largest batch.

    ceiling: one instance with the ceiling's threads and batches up to the case's max batch.
    spread: one single-threaded instance per core, each batching up to max batch / cores, so
    that one instance computes while the other's batch fills (no idle core between batches).
    """
    if layout == "ceiling":
        return {"instances": ceiling["instances"], "threads": ceiling["threads"],
                "max_batch_size": case.max_batch}
    return {"instances": CORES, "threads": 1, "max_batch_size": max(1, case.max_batch // CORES)}


def write_repository(case: Case, model: Path, root: Path, setting: dict[str, Any],
                     queue: str = "{max_size: 1024}") -> Path:
    directory = root / case.name / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(model.read_bytes())
    (root / case.name / "config.yaml").write_text(
        f"max_batch_size: {setting.get('max_batch_size', case.max_batch)}\n"
        f"instances: {setting['instances']}\n"
        f"threads: {setting['threads']}\n"
        f"batching: {{max_queue_delay_ms: {case.delay_ms}}}\n"
        f"queue: {queue}\n"
    )
    return root


# -- processes ------------------------------------------------------------------------------
def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime of this process only


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class SurgeServer:
    process: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT


def _endpoints(path: Path, process: subprocess.Popen[bytes], timeout: float = 180.0
               ) -> Endpoints:
    """The addresses `surge serve --endpoints-file` wrote once listening."""
    deadline = time.monotonic() + timeout
    while (bound := read_endpoints(path)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"surge serve wrote no endpoints (exit {process.poll()})")
        time.sleep(0.1)
    return bound


@contextlib.contextmanager
def surge_server(repo: Path, *options: str) -> Iterator[SurgeServer]:
    """`surge serve repo` on loopback ports the system chooses, ready, stopped when the block
    ends."""
    with tempfile.TemporaryDirectory(prefix="surge-bench-") as tmp:
        endpoints = Path(tmp) / "endpoints.json"
        command = [sys.executable, "-c", "from surge.cli import main; main()", "serve",
                   str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                   "--endpoints-file", str(endpoints), *options]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            bound = _endpoints(endpoints, process)
            server = SurgeServer(process, bound.http, bound.grpc)
            wait_ready(server.url, process)
            yield server
        finally:
            stop(process)


def bench_levels(url: str, model: str, protocol: str, levels: list[int], duration: float,
                 pid: int, probe: CeilingProbe) -> list[dict[str, Any]]:
    from surge.bench import run_bench

    rows = []
    for level in levels:
        ceiling_before = probe()
        before = cpu_seconds(pid)
        report = run_bench(url, model, [level], duration, protocol, warmup_s=1.0)
        front_cpu = cpu_seconds(pid) - before
        run = asdict(report.runs[0])
        # The warm-up second is included in the CPU delta: count its requests too (estimate).
        sent = run["requests"] * (1 + 1.0 / duration)
        run["front_end_cpu_us_per_request"] = front_cpu / max(sent, 1) * 1e6
        run["ceiling_items_per_s"] = (ceiling_before + probe()) / 2
        run["over_ceiling"] = run["throughput"] / run["ceiling_items_per_s"]
        rows.append(run)
        console.log(f"  {model} {protocol} c={level}: {run['throughput']:,.1f} req/s "
                    f"({run['over_ceiling']:.2f} of {run['ceiling_items_per_s']:,.1f}), "
                    f"p99 {run['p99_ms']:.1f} ms, errors {run['errors'] or 0}, client CPU "
                    f"{run['client_cpu_share']:.0%}, front end "
                    f"{run['front_end_cpu_us_per_request']:.0f} us/req")
    return rows


def run_surge(repo: Path, case: Case, levels: list[int], duration: float,
              probe: CeilingProbe) -> dict[str, Any]:
    with surge_server(repo) as server:
        pid = server.process.pid
        return {
            "http": bench_levels(server.url, case.name, "http", levels, duration, pid, probe),
            "grpc": bench_levels(server.grpc, case.name, "grpc", levels, duration, pid, probe),
        }


def run_naive(model: Path, case: Case, levels: list[int], duration: float, threads: int,
              probe: CeilingProbe, framework: str = "fastapi") -> list[dict[str, Any]]:
    port = unused_port()
    command = [sys.executable, str(ROOT / "benchmarks" / "naive_server.py"), case.name,
               str(model), str(port), str(threads), framework]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        return bench_levels(url, case.name, "http-json", levels, duration, process.pid, probe)
    finally:
        stop(process)


def run_overload(case: Case, model: Path, setting: dict[str, Any], root: Path, duration: float,
                 deadline_ms: float) -> dict[str, Any]:
    """c=256 against a queue limit of 64 and a default deadline: only 200 or 503 may come back,
    and the accepted requests' p99 must stay within the deadline."""
    from surge.bench import run_bench

    repo = write_repository(case, model, root, setting,
                            queue=f"{{max_size: 64, default_timeout_ms: {deadline_ms}}}")
    with surge_server(repo) as server:
        url = server.url
        run = asdict(run_bench(url, case.name, [256], duration, "http", warmup_s=1.0).runs[0])
        process = server.process
        alive = process.poll() is None and httpx.get(f"{url}/v2/health/live").status_code == 200
    result = {"queue_limit": 64, "deadline_ms": deadline_ms, "run": run, "server_alive": alive,
              "only_200_or_503": set(run["errors"]) <= {"503"},
              "p99_within_deadline": run["p99_ms"] <= deadline_ms}
    console.log(f"  overload {case.name} c=256 queue 64: {run['throughput']:,.1f} req/s ok, "
                f"errors {run['errors']}, p99 {run['p99_ms']:.1f} ms (deadline {deadline_ms} ms),"
                f" server alive {alive}")
    return result


# -- report ---------------------------------------------------------------------------------
def _at(rows: list[dict[str, Any]], level: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["concurrency"] == level), None)


def summarize(result: CaseResult, case: Case) -> dict[str, Any]:
    ceiling = result.ceiling["items_per_s"]
    summary: dict[str, Any] = {"ceiling_items_per_s_at_start": ceiling}
    for protocol in ("http", "grpc"):
        c64 = _at(result.surge.get(protocol, []), 64)
        if c64:
            summary[f"{protocol}_c64_over_ceiling"] = c64["over_ceiling"]
            summary[f"{protocol}_c64_p99_ms"] = c64["p99_ms"]
            largest = result.ceiling["batch_ms"].get(
                f"b{result.config['max_batch_size']}_t{result.config['threads']}")
            if largest:
                summary[f"{protocol}_c64_p99_over_max_batch"] = c64["p99_ms"] / largest
    naive = _at(result.naive, 64)
    http = _at(result.surge.get("http", []), 64)
    if naive and http and naive["throughput"] > 0:
        summary["http_c64_over_naive_c64"] = http["throughput"] / naive["throughput"]
        summary["naive_c64_over_ceiling"] = naive["over_ceiling"]
    bare = _at(result.naive_starlette, 64)
    if bare and http and bare["throughput"] > 0:
        summary["http_c64_over_starlette_c64"] = http["throughput"] / bare["throughput"]
    return summary


def print_tables(results: list[CaseResult], summaries: dict[str, dict[str, Any]]) -> None:
    for result in results:
        table = Table(title=f"{result.name}: ceiling {result.ceiling['items_per_s']:,.1f} items/s"
                            f" (batch {result.ceiling['batch']}, {result.ceiling['threads']} "
                            "threads)")
        for column in ("server", "c", "req/s", "/ceiling", "p50 ms", "p99 ms", "errors",
                       "client CPU", "front end us/req"):
            table.add_column(column, justify="right")
        rows = [(f"surge {p}", r) for p in ("http", "grpc") for r in result.surge.get(p, [])]
        rows += [("naive fastapi", r) for r in result.naive]
        rows += [("naive starlette", r) for r in result.naive_starlette]
        for label, r in rows:
            table.add_row(label, str(r["concurrency"]), f"{r['throughput']:,.1f}",
                          f"{r['over_ceiling']:.2f}",
                          f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                          str(sum(r["errors"].values())), f"{r['client_cpu_share']:.0%}",
                          f"{r['front_end_cpu_us_per_request']:.0f}")
        console.print(table)
        console.print({k: round(v, 3) if isinstance(v, float) else v
                       for k, v in summaries[result.name].items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet224,resnet64,fashion")
    parser.add_argument("--levels", default="1,16,64,256")
    parser.add_argument("--naive-levels", default="1,64")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    parser.add_argument("--overload-models", default="fashion",
                        help="models for the c=256 / queue 64 check ('' to skip)")
    parser.add_argument("--overload-only", action="store_true",
                        help="run only the overload check (no ceiling table)")
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--layout", choices=["spread", "ceiling"], default="spread",
                        help="server instances x threads (see serving_layout)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    naive_levels = [int(x) for x in args.naive_levels.split(",") if x]
    results: list[CaseResult] = []
    summaries: dict[str, dict[str, Any]] = {}
    overload: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="surge-serving-bench-") as tmp:
        for name in [m for m in args.overload_models.split(",") if m]:
            case = CASES[name]
            console.rule(f"overload {case.name}")
            model = export_model(case, Path(tmp) / "models" / f"{case.name}.onnx")
            setting = {"threads": 1, "instances": CORES}
            overload[name] = run_overload(case, model, setting, Path(tmp) / f"over-{name}",
                                          args.duration, args.deadline_ms)
        for name in [] if args.overload_only else args.models.split(","):
            case = CASES[name]
            console.rule(case.name)
            model = export_model(case, Path(tmp) / "models" / f"{case.name}.onnx")
            result = CaseResult(case.name)
            result.ceiling = measure_ceiling(case, model)
            setting = serving_layout(case, result.ceiling, args.layout)
            repo = write_repository(case, model, Path(tmp) / f"repo-{case.name}", setting)
            result.config = {**setting, "delay_ms": case.delay_ms, "layout": args.layout}
            probe = CeilingProbe(case, model, result.ceiling["batch"], result.ceiling["threads"])
            result.surge = run_surge(repo, case, levels, args.duration, probe)
            result.naive = run_naive(model, case, naive_levels, args.duration, CORES, probe)
            result.naive_starlette = run_naive(model, case, naive_levels, args.duration, CORES,
                                               probe, "starlette")
            results.append(result)
            summaries[case.name] = summarize(result, case)
    print_tables(results, summaries)
    for name, check in overload.items():
        console.print(f"overload {name}: only 200/503 {check['only_200_or_503']}, p99 "
                      f"{check['run']['p99_ms']:.1f} ms within {check['deadline_ms']} ms: "
                      f"{check['p99_within_deadline']}, server alive {check['server_alive']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "cores": CORES, "duration_s_per_level": args.duration,
        "results": [asdict(r) for r in results], "summary": summaries, "overload": overload,
    }, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

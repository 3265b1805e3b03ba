"""Soak: a real `surge serve` under mixed traffic and faults for a long time.

Two models (the fashion CNN and a tiny ONNX adder), clients over binary-free JSON HTTP and gRPC,
clients that hang up before their answer, a worker killed with SIGKILL every `--kill-every`
seconds and a model reloaded every `--reload-every` seconds. Per window (`--window`, a minute by
default) it reports requests, errors by kind, the p99 of answered requests and the RSS of the
front end and of all processes; at the end, requests left unanswered (the target is zero) and
the front end's RSS growth after the first window (target < 5%).

`--cycles N` instead loads and unloads a model N times and reports RSS and the shared-memory
segments in /dev/shm every tenth cycle (both should stay flat).

    .venv/bin/python benchmarks/soak.py --duration 1800                    # the 30-minute soak
    .venv/bin/python benchmarks/soak.py --cycles 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.server.process import read_endpoints

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FASHION = ROOT / "examples" / "repository" / "fashion"
TIMEOUT_S = 30.0  # a request not answered within this counts as unanswered


@dataclass
class Sample:
    end: float
    seconds: float
    outcome: str  # ok, http_503, grpc_UNAVAILABLE, ..., unanswered, hung_up


@dataclass
class Window:
    start_s: float
    requests: int
    errors: dict[str, int]
    p99_ms: float | None
    rss_front_mib: float
    rss_total_mib: float


@dataclass
class SoakReport:
    duration_s: float
    requests: int
    answered: int
    unanswered: int
    hung_up: int
    errors: dict[str, int]
    kills: int
    reloads: int
    reload_failures: int
    rss_growth_pct: float
    server_exit: int | None
    windows: list[Window] = field(default_factory=list)


def tiny_onnx(path: Path) -> None:
    """y = x + 1 on FP32 [-1, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "tiny", [x], [y],
                              [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def build_repository(folder: Path) -> Path:
    repo = folder / "repo"
    shutil.copytree(FASHION, repo / "fashion", ignore=shutil.ignore_patterns("tuning", "variants"))
    (repo / "fashion" / "config.yaml").write_text(
        "max_batch_size: 16\ninstances: 1\nthreads: 1\nbatching: {max_queue_delay_ms: 2.0}\n")
    tiny_onnx(repo / "tiny" / "1" / "model.onnx")
    (repo / "tiny" / "config.yaml").write_text(
        "max_batch_size: 8\ninstances: 1\nthreads: 1\nbatching: {max_queue_delay_ms: 1.0}\n")
    return repo


class Server:
    """`surge serve` in a subprocess on ports the system chooses (read from its endpoints
    file)."""

    def __init__(self, repo: Path, log: Path, *args: str) -> None:
        endpoints = log.with_name(log.name + ".endpoints.json")
        # A server started before on the same log (density.py starts `dedicated-1` in two
        # sections) left its file: read, it would name that server's closed ports.
        endpoints.unlink(missing_ok=True)
        command = [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
                   "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                   "--endpoints-file", str(endpoints), *args]
        with log.open("wb") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while (bound := read_endpoints(endpoints)) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        self.http, self.grpc, self.metrics = bound.http, bound.grpc, bound.metrics
        self.http_port = int(self.http.rsplit(":", 1)[1])
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.http}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> list[int]:
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children
                if b"resource_tracker" not in _read(Path(f"/proc/{c}/cmdline"))]

    def rss_mib(self) -> tuple[float, float]:
        """(front end, front end + workers) resident memory."""
        front = _rss_kib(self.process.pid)
        return front / 1024, (front + sum(_rss_kib(p) for p in self.workers())) / 1024

    def stop(self) -> int | None:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _rss_kib(pid: int) -> int:
    for line in _read(Path(f"/proc/{pid}/status")).decode().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def json_body(model: str) -> bytes:
    if model == "tiny":
        tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}
    else:
        tensor = {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                  "data": [0.5] * 784}
    return json.dumps({"inputs": [tensor]}).encode()


def grpc_request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    if model == "tiny":
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    else:
        request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
        request.raw_input_contents.append(np.full((1, 1, 28, 28), 0.5, np.float32).tobytes())
    return request


class Clients:
    """Client threads recording one Sample per request until `stop` is set."""

    def __init__(self, server: Server, http: int, grpc_clients: int, hangups: int) -> None:
        self.server, self.samples, self.stop = server, list[Sample](), threading.Event()
        targets: list[Callable[[int], None]] = ([self._http] * http + [self._grpc] * grpc_clients
                                                + [self._hang_up] * hangups)
        self.threads = [threading.Thread(target=t, args=(i,), daemon=True)
                        for i, t in enumerate(targets)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT_S + 5)

    def _record(self, start: float, outcome: str) -> None:
        end = time.monotonic()
        self.samples.append(Sample(end, end - start, outcome))

    def _http(self, index: int) -> None:
        model = "tiny" if index % 2 else "fashion"
        body, url = json_body(model), f"{self.server.http}/v2/models/{model}/infer"
        with httpx.Client(timeout=TIMEOUT_S) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    status = client.post(url, content=body).status_code
                    self._record(start, "ok" if status == 200 else f"http_{status}")
                except httpx.HTTPError:
                    self._record(start, "unanswered")

    def _grpc(self, index: int) -> None:
        request = grpc_request("fashion" if index % 2 else "tiny")
        with grpc.insecure_channel(self.server.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    stub.ModelInfer(request, timeout=TIMEOUT_S)
                    self._record(start, "ok")
                except grpc.RpcError as exc:
                    code = exc.code()
                    self._record(start, "unanswered" if code == grpc.StatusCode.DEADLINE_EXCEEDED
                                 else f"grpc_{code.name}")

    def _hang_up(self, index: int) -> None:
        """Send a request and close the connection before the answer."""
        body = json_body("fashion")
        head = (f"POST /v2/models/fashion/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                f"{len(body)}\r\nContent-Type: application/json\r\n\r\n").encode()
        while not self.stop.is_set():
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", self.server.http_port), timeout=5) as sock:
                sock.sendall(head + body)
                time.sleep(random.uniform(0.0, 0.01))
            self._record(start, "hung_up")
            time.sleep(0.02)


def run_faults(server: Server, args: argparse.Namespace, rss: list[tuple[float, float, float]],
               started: float) -> tuple[int, int, int]:
    """Kill a worker and reload a model on schedule; sample RSS each second. (kills, reloads,
    failed reloads)"""
    kills = reloads = failures = 0
    next_kill, next_reload = started + args.kill_every, started + args.reload_every
    while (now := time.monotonic()) < started + args.duration:
        if now >= next_kill and (workers := server.workers()):
            os.kill(random.choice(workers), signal.SIGKILL)
            kills, next_kill = kills + 1, now + args.kill_every
        if now >= next_reload:
            answer = httpx.post(f"{server.http}/v2/repository/models/tiny/load", timeout=120)
            reloads, failures = reloads + 1, failures + (answer.status_code != 200)
            next_reload = time.monotonic() + args.reload_every
        rss.append((time.monotonic() - started, *server.rss_mib()))
        time.sleep(1.0)
    return kills, reloads, failures


def windows(samples: list[Sample], rss: list[tuple[float, float, float]], started: float,
            width: float) -> list[Window]:
    result = []
    count = max(1, int(max((s.end - started for s in samples), default=0) // width) + 1)
    for i in range(count):
        inside = [s for s in samples if i * width <= s.end - started < (i + 1) * width]
        ok = sorted(s.seconds for s in inside if s.outcome == "ok")
        errors = Counter(s.outcome for s in inside if s.outcome not in ("ok", "hung_up"))
        memory = [r for r in rss if r[0] < (i + 1) * width] or rss[:1] or [(0.0, 0.0, 0.0)]
        result.append(Window(i * width, len(inside), dict(errors),
                             round(ok[int(0.99 * (len(ok) - 1))] * 1e3, 1) if ok else None,
                             round(memory[-1][1], 1), round(memory[-1][2], 1)))
    return result


def soak(args: argparse.Namespace, folder: Path) -> SoakReport:
    server = Server(build_repository(folder), folder / "server.log")
    clients = Clients(server, args.http_clients, args.grpc_clients, args.hangup_clients)
    rss: list[tuple[float, float, float]] = []
    started = time.monotonic()
    clients.start()
    try:
        kills, reloads, failures = run_faults(server, args, rss, started)
    finally:
        clients.join()
        code = server.stop()
    samples = clients.samples
    table = windows(samples, rss, started, args.window)
    outcomes = Counter(s.outcome for s in samples)
    base = table[1].rss_front_mib if len(table) > 2 else table[0].rss_front_mib
    growth = 100.0 * (table[-1].rss_front_mib - base) / base if base else 0.0
    errors = {k: v for k, v in outcomes.items() if k not in ("ok", "hung_up")}
    return SoakReport(round(time.monotonic() - started, 1), len(samples),
                      len(samples) - outcomes["unanswered"] - outcomes["hung_up"],
                      outcomes["unanswered"], outcomes["hung_up"], errors, kills, reloads,
                      failures, round(growth, 2), code, table)


def shm_segments(pid: int) -> int:
    return sum(1 for p in Path("/dev/shm").iterdir() if p.name.startswith(f"surge-{pid}-"))


def cycles(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Load and unload `tiny` args.cycles times; RSS and shm segments every tenth cycle."""
    server = Server(build_repository(folder), folder / "server.log")
    points = []
    body = json_body("tiny")
    try:
        for i in range(args.cycles + 1):
            if i % 10 == 0:
                points.append({"cycle": i, "rss_front_mib": round(server.rss_mib()[0], 1),
                               "shm_segments": shm_segments(server.process.pid)})
            httpx.post(f"{server.http}/v2/repository/models/tiny/unload", timeout=60)
            httpx.post(f"{server.http}/v2/repository/models/tiny/load", timeout=120)
            if httpx.post(f"{server.http}/v2/models/tiny/infer", content=body).status_code != 200:
                raise SystemExit(f"cycle {i}: tiny does not answer")
    finally:
        code = server.stop()
    base = points[1]["rss_front_mib"]  # after 10 cycles: imports and allocator pools settled
    growth = 100.0 * (points[-1]["rss_front_mib"] - base) / base
    return {"cycles": args.cycles, "rss_growth_pct_after_10": round(growth, 2),
            "shm_segments_first_last": [points[0]["shm_segments"], points[-1]["shm_segments"]],
            "server_exit": code, "points": points}


def print_soak(report: SoakReport) -> None:
    print(f"{'minute':>7} {'requests':>9} {'p99 ms':>8} {'RSS front':>10} {'RSS all':>8}  errors")
    for w in report.windows:
        print(f"{w.start_s / 60:7.1f} {w.requests:9d} {w.p99_ms or 0:8.1f} "
              f"{w.rss_front_mib:9.1f}M {w.rss_total_mib:7.1f}M  {w.errors}")
    print(f"requests {report.requests}, answered {report.answered}, unanswered "
          f"{report.unanswered}, hung up by the client {report.hung_up}; errors {report.errors}")
    print(f"worker kills {report.kills}, reloads {report.reloads} ({report.reload_failures} "
          f"failed); front-end RSS growth after the first window {report.rss_growth_pct}%; "
          f"server exit {report.server_exit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--reload-every", type=float, default=300.0)
    parser.add_argument("--http-clients", type=int, default=4)
    parser.add_argument("--grpc-clients", type=int, default=2)
    parser.add_argument("--hangup-clients", type=int, default=1)
    parser.add_argument("--cycles", type=int, default=0, help="load/unload cycles instead")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="surge-soak-") as tmp:
        if args.cycles:
            result: dict[str, Any] = cycles(args, Path(tmp))
            print(json.dumps({k: v for k, v in result.items() if k != "points"}))
        else:
            report = soak(args, Path(tmp))
            print_soak(report)
            result = asdict(report)
    path = args.json or RESULTS / ("soak_cycles.json" if args.cycles else "soak.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

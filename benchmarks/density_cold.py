"""Cold starts: the latency of a request that finds its model evicted, and load/evict cycles.

`surge serve --load on-demand --memory-budget B` on three copies of the default fashion model,
with B what one of them was measured to take (a first server measures it) times one and a half,
so that only one fits: requests rotate over the three, each finds its model evicted, waits for
it to load (evicting another) and is answered. A request counts as cold when the server's
`surge_cold_start_seconds` count of its model grew while it was answered. Reported: the
client's latency of the cold requests and of warm ones right after (p50, p99), and the server's
own mean cold start. Dedicated workers by default; `--cold-modes dedicated,shared` adds
the models in a shared worker group (`worker: shared`) beside a pinned third model that keeps
the group's process running, so that a cold start loads a model into a running process instead
of starting one.

`benchmarks/density.py --sections cold-start` runs the same section beside the others.
`--cycles N` instead runs N load/evict cycles and prints the front end's RSS, the /dev/shm
segments and the worker processes every tenth cycle (all should stay flat).

    .venv/bin/python benchmarks/density_cold.py                  # cold-start latency
    .venv/bin/python benchmarks/density_cold.py --cycles 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import FASHION, RESULTS, Server  # noqa: E402

CONFIG = "max_batch_size: 64\nbatching: {max_queue_delay_ms: 2.0}\n"
MODELS = ("cold-a", "cold-b", "cold-c")
ANCHOR = "anchor"  # shared mode: pinned and loaded at start, it keeps the group's process up
SHARED = "worker: shared\n"


def build(folder: Path, shared: bool) -> Path:
    repo = folder / f"cold-{'shared' if shared else 'dedicated'}"
    configs = dict.fromkeys(MODELS, CONFIG + (SHARED if shared else ""))
    if shared:
        configs[ANCHOR] = CONFIG + SHARED + "load: eager\npinned: true\n"
    for name, config in configs.items():
        version = repo / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FASHION / "1" / "model.onnx", version / "model.onnx")
        (repo / name / "config.yaml").write_text(config)
    return repo


def body() -> dict[str, Any]:
    image = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                        "data": image.ravel().tolist()}]}


def timed(client: httpx.Client, name: str, payload: dict[str, Any]) -> float:
    started = time.perf_counter()
    answer = client.post(f"/v2/models/{name}/infer", json=payload)
    if answer.status_code != 200:
        raise SystemExit(f"{name}: {answer.status_code} {answer.text}")
    return time.perf_counter() - started


def metrics(server: Server) -> dict[str, float]:
    text = httpx.get(server.metrics, timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("surge_cold_start_seconds_", "surge_model_memory_bytes",
                            "surge_model_evictions_total")):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def cold_starts(server: Server, name: str) -> float:
    return metrics(server).get(f'surge_cold_start_seconds_count{{model="{name}"}}', 0.0)


def model_size(repo: Path, folder: Path) -> tuple[int, int]:
    """(bytes one cold model takes, bytes the pinned ones take), measured on a server without
    a budget."""
    server = Server(repo, folder / f"{repo.name}-size.log", "--load", "on-demand")
    try:
        with httpx.Client(base_url=server.http, timeout=300) as client:
            timed(client, MODELS[0], body())
        values = metrics(server)
    finally:
        server.stop()
    pinned = int(values.get(f'surge_model_memory_bytes{{model="{ANCHOR}"}}', 0))
    return int(values[f'surge_model_memory_bytes{{model="{MODELS[0]}"}}']), pinned


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"samples": 0}
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "samples": len(seconds)}


def cold_run(folder: Path, shared: bool, requests: int) -> dict[str, Any]:
    """`requests` cold requests (alternating models) and a warm one after each."""
    repo = build(folder, shared)
    size, pinned = model_size(repo, folder)
    # A model's share of a group's process is small and its measurement noisy (allocator
    # reuse): one times its size leaves no room for a second there.
    budget = f"{int(pinned + size * (1.0 if shared else 1.5))}"
    server = Server(repo, folder / f"{repo.name}.log", "--load", "on-demand",
                    "--memory-budget", budget)
    cold: list[float] = []
    warm: list[float] = []
    payload = body()
    try:
        with httpx.Client(base_url=server.http, timeout=300) as client:
            for i in range(requests):
                name = MODELS[i % len(MODELS)]
                before = cold_starts(server, name)
                seconds = timed(client, name, payload)
                (cold if cold_starts(server, name) > before else warm).append(seconds)
                warm.append(timed(client, name, payload))
        values = metrics(server)
    finally:
        server.stop()
    count = sum(v for k, v in values.items() if k.startswith("surge_cold_start_seconds_count"))
    total = sum(v for k, v in values.items() if k.startswith("surge_cold_start_seconds_sum"))
    evictions = sum(v for k, v in values.items() if k.startswith("surge_model_evictions_total"))
    row: dict[str, Any] = {
        "mode": "shared" if shared else "dedicated", "model_mb": round(size / 1e6, 1),
        "budget_mb": round(int(budget) / 1e6, 1), "cold": percentiles(cold),
        "warm": percentiles(warm), "server_cold_start_mean_s": round(total / max(count, 1), 3),
        "evictions": int(evictions), "load_average": load_average()}
    print(f"{row['mode']:>9}: {len(cold)} cold, p50 {row['cold'].get('p50_ms', 0):8.1f} ms  p99 "
          f"{row['cold'].get('p99_ms', 0):8.1f} ms | warm p50 {row['warm']['p50_ms']:6.1f} ms | "
          f"{row['evictions']} evictions, model {row['model_mb']} MB  (load {row['load_average']})",
          flush=True)
    return row


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cold_start_section(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """The `cold-start` section of benchmarks/density.py (and of this script)."""
    requests = getattr(args, "cold_requests", 20)
    modes = getattr(args, "cold_modes", "dedicated").split(",")
    rows = []
    for mode in modes:
        try:
            rows.append(cold_run(folder, mode == "shared", requests))
        except SystemExit as exc:  # one mode failing still reports the others
            print(f"{mode}: not measured: {exc}", flush=True)
            rows.append({"mode": mode, "error": str(exc)[-500:]})
    return {"requests": requests, "rows": rows}


def _shm_segments(pid: int) -> int:
    return sum(1 for p in Path("/dev/shm").iterdir() if p.name.startswith(f"surge-{pid}-"))


def cycles(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """`args.cycles` load/evict cycles; front-end RSS, shm segments, workers every tenth."""
    repo = build(folder, False)
    budget = str(int(model_size(repo, folder)[0] * 1.5))
    server = Server(repo, folder / "cycles.log", "--load", "on-demand", "--memory-budget", budget)
    rows: list[dict[str, Any]] = []
    payload = body()
    try:
        with httpx.Client(base_url=server.http, timeout=300) as client:
            for cycle in range(args.cycles + 1):
                if cycle % 10 == 0:
                    front, _ = server.rss_mib()
                    row: dict[str, Any] = {"cycle": cycle, "front_end_rss_mib": round(front, 1),
                           "shm_segments": _shm_segments(server.process.pid),
                           "workers": len(server.workers())}
                    rows.append(row)
                    print(row, flush=True)
                for name in MODELS:
                    timed(client, name, payload)
    finally:
        server.stop()
    growth = rows[-1]["front_end_rss_mib"] / rows[1]["front_end_rss_mib"] - 1 if len(rows) > 2 \
        else 0.0
    print(f"front-end RSS growth after cycle 10: {growth * 100:+.2f}%")
    return {"cycles": args.cycles, "rows": rows, "rss_growth_after_10": round(growth, 4),
            "load_average": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-requests", type=int, default=20,
                        help="cold requests per mode (alternating between two models)")
    parser.add_argument("--cold-modes", default="dedicated", help="dedicated,shared")
    parser.add_argument("--cycles", type=int, default=0,
                        help="run this many load/evict cycles instead")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="surge-cold-"))
    results: dict[str, Any] = {"cores": os.cpu_count(), "load_average_start": load_average()}
    try:
        if args.cycles:
            results["cycles"] = cycles(args, folder)
        else:
            results["cold-start"] = cold_start_section(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    name = "density_cycles.json" if args.cycles else "density_cold.json"
    path = args.json or RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

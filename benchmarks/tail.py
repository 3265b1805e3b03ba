"""The tail when clients outnumber capacity: p99 at 256 closed-loop clients against the mean
latency that throughput alone dictates (256 / requests per second, Little's law), with the
server's own per-request times from its access log beside the client's: the total, its split
into the queue wait and dispatch to answer (a batch's wait in its instance's slot and its
compute), and where the slowest 1% spent theirs.

ResNet-18 3x64x64, binary HTTP; `--config` is the model's config.yaml (default: name only).
Run it once per source tree (`PYTHONPATH=other/src`) for a before/after side by side.

    .venv/bin/python benchmarks/tail.py [--config "instances: 2\\nthreads: 1"] [--duration 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serving import CASES, export_model, surge_server  # noqa: E402


def measure(repo: Path, log: Path, clients: int, duration: float) -> tuple[Any, list[dict[str, Any]]]:
    from surge.bench import run_bench

    with surge_server(repo, "--access-log", str(log)) as server:
        run_bench(server.url, "resnet64", [clients], 4.0, "http", warmup_s=0.0)  # steady state
        mark = log.stat().st_size
        run = run_bench(server.url, "resnet64", [clients], duration, "http",
                        warmup_s=0.0).runs[0]
    lines = log.read_bytes()[mark:].decode().splitlines()
    return run, [json.loads(line) for line in lines if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="", help="config.yaml text ('' = name only)")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--duration", type=float, default=12.0)
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="surge-tail-") as tmp:
        repo = Path(tmp) / "repo"
        (repo / "resnet64" / "1").mkdir(parents=True)
        export_model(CASES["resnet64"], repo / "resnet64" / "1" / "model.onnx")
        (repo / "resnet64" / "config.yaml").write_text(args.config.replace("\\n", "\n") or "{}\n")
        run, rows = measure(repo, Path(tmp) / "access.jsonl", args.clients, args.duration)
    mean_s = args.clients / run.throughput
    server = np.array([r["total_ms"] for r in rows], float)
    split = {part: spread(rows, part) for part in ("queue_ms", "compute_ms", "batch_size")}
    print(json.dumps({
        "config": args.config or "name only", "load_average": load, "throughput": run.throughput,
        "mean_latency_by_littles_law_ms": mean_s * 1e3, "client_p50_ms": run.p50_ms,
        "client_p99_ms": run.p99_ms, "p99_over_mean": run.p99_ms / 1e3 / mean_s,
        "errors": run.errors, "server_total_ms": {
            "mean": float(server.mean()), "p50": float(np.percentile(server, 50)),
            "p99": float(np.percentile(server, 99))} if len(server) else {},
        "server_split": split, "slowest_1pct": slowest(rows, server),
    }, indent=2))


def spread(rows: list[dict[str, Any]], part: str) -> dict[str, float]:
    """Mean, p50 and p99 of one field of the access log (queue wait, batch time, batch size)."""
    values = np.array([r[part] or 0 for r in rows], float)
    if not len(values):
        return {}
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99))}


def slowest(rows: list[dict[str, Any]], total: np.ndarray) -> dict[str, float]:
    """Where the slowest 1% of requests (server time) spent it: queue or batch, and in what size."""
    if not len(total):
        return {}
    cut = np.percentile(total, 99)
    tail = [r for r, t in zip(rows, total, strict=True) if t >= cut]
    return {part: float(np.mean([r[part] or 0 for r in tail]))
            for part in ("queue_ms", "compute_ms", "batch_size", "total_ms")}


if __name__ == "__main__":
    main()

"""Ranking benchmark: candidates scored per second and p99 for the DLRM at 64 clients x 100
candidates (one request = one user's 100 candidates), in process and served, untuned and tuned;
and the int8/fp16 variants of the model checked by the ranking metric.

Needs the trained model (`surge train recipes/dlrm.yaml --nproc 2`, into out/recommendation).

    .venv/bin/python benchmarks/ranking.py
    .venv/bin/python benchmarks/ranking.py --duration 5 --tuned-instances 2 --tuned-batch 512
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from surge.bench import run_bench
from surge.evaluate.harness import evaluate, load_dataset
from surge.repository import Repository

CANDIDATES = 100
CLIENTS = 64


@dataclass(frozen=True)
class Served:
    items_per_s: float
    requests_per_s: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_and_bench(repo: Path, model: str, rows: int, clients: int, duration: float,
                    dataset: str, config: dict[str, Any]) -> Served:
    """Copy `model` into a scratch repository with `config` merged into its config.yaml, serve
    it, and load it with `clients` closed-loop clients sending `rows` rows each request."""
    scratch = Path(tempfile.mkdtemp(prefix="surge-bench-"))
    shutil.copytree(repo / model, scratch / model)
    path = scratch / model / "config.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **config}))
    http, grpc, metrics = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(scratch),
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        run = run_bench(url, model, clients, duration, batch_size=rows, dataset=dataset).runs[0]
        return Served(run.throughput * rows, run.throughput, run.p99_ms)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        shutil.rmtree(scratch, ignore_errors=True)


def in_process(runner: Any, inputs: dict[str, np.ndarray], seconds: float = 2.0) -> float:
    """Rows per second of `runner` on `inputs`, run back to back."""
    runner.run(inputs)
    rows, done, started = len(next(iter(inputs.values()))), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runner.run(inputs)
        done += rows
    return done / (time.perf_counter() - started)


def variant_checks(repo: Path, model: str, dataset_name: str) -> list[tuple[str, float, float]]:
    """(variant, NDCG@10, AUC) of the model and of its int8-dynamic and fp16 variants."""
    from surge.api import optimize
    from surge.optimize.pipeline import OptimizeOptions

    dataset = load_dataset(dataset_name, "user")
    rows = []
    try:
        optimize(repo, model, "int8-dynamic,fp16", OptimizeOptions(keep_failed=True))
    except Exception as exc:  # reported in the table, not fatal to the speed runs
        rows.append((f"optimize failed: {exc}", float("nan"), float("nan")))
    found = Repository(repo)
    for ref in (model, f"{model}@int8-dynamic", f"{model}@fp16"):
        try:
            details = evaluate(found.load(ref), dataset, "ranking").details
        except Exception as exc:
            rows.append((f"{ref}: {exc}", float("nan"), float("nan")))
            continue
        rows.append((ref, 100 * details.ndcg_at_k, 100 * details.auc))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("out/recommendation"))
    parser.add_argument("--model", default="dlrm")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--tuned-instances", type=int, default=2)
    parser.add_argument("--tuned-batch", type=int, default=512)
    parser.add_argument("--tuned-delay-ms", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.repo / args.model).is_dir():
        print(f"no model {args.model!r} in {args.repo}: run surge train recipes/dlrm.yaml first")
        return 2
    runner = Repository(args.repo).load(args.model).runner
    dataset = load_dataset("simulated-clicks", "user")
    one_user = {k: v[:CANDIDATES] for k, v in dataset.inputs.items()}
    results: dict[str, Any] = {"in_process_candidates_per_s": in_process(runner, one_user)}
    untuned = {"instances": 1, "max_batch_size": 256}
    tuned = {"instances": args.tuned_instances, "max_batch_size": args.tuned_batch,
             "batching": {"enabled": True, "max_queue_delay_ms": args.tuned_delay_ms}}
    for label, config in (("untuned", untuned), ("tuned", tuned)):
        results[label] = serve_and_bench(args.repo, args.model, CANDIDATES, CLIENTS,
                                         args.duration, "simulated-clicks", config).__dict__
    results["tuned_over_untuned"] = (results["tuned"]["items_per_s"]
                                     / results["untuned"]["items_per_s"])
    results["variants"] = variant_checks(args.repo, args.model, "simulated-clicks")
    table = Table(title=f"{args.model}: {CLIENTS} clients x {CANDIDATES} candidates")
    for column in ("setting", "candidates/s", "requests/s", "p99 ms"):
        table.add_column(column)
    table.add_row("in process, batch 100", f"{results['in_process_candidates_per_s']:,.0f}",
                  "", "")
    for label in ("untuned", "tuned"):
        run = results[label]
        table.add_row(f"served, {label}", f"{run['items_per_s']:,.0f}",
                      f"{run['requests_per_s']:,.1f}", f"{run['p99_ms']:.1f}")
    console = Console()
    console.print(table)
    console.print(f"tuned / untuned candidates/s: {results['tuned_over_untuned']:.2f}x")
    for ref, ndcg, auc in results["variants"]:
        console.print(f"{ref}: NDCG@10 {ndcg:.2f}  AUC {auc:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

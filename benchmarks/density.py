"""Many models on one machine: memory and time to ready, dedicated workers vs a shared group,
and throughput over 100 models against the same load on one model.

Sections (`--sections`, all by default):

- `memory`: a real `surge serve` on a repository of N copies of the default fashion model
  (N in `--counts`), each with a dedicated worker or all in the default shared group
  (`worker: shared`); the resident memory summed over the server's whole process tree and the
  seconds from launch to `/v2/health/ready`. Dedicated runs stop at `--max-dedicated` models
  (each costs a ~95 MB process); larger counts are extrapolated from the measured per-model
  figure and marked so.
- `load`: 64 clients (`--clients`) in a closed loop over binary HTTP, spread uniformly and
  Zipf-distributed (`--zipf`) over 100 models of one shared group, beside the same load on one
  model served the default way (one dedicated worker): throughput and p99 of each, and the
  ratios (target >= 0.8).

- `cold-start` (`benchmarks/density_cold.py`): the latency of requests that find their model
  evicted under `--load on-demand --memory-budget`, p50/p99 (`--cold-requests`, `--cold-modes`).

    .venv/bin/python benchmarks/density.py                                 # both sections
    .venv/bin/python benchmarks/density.py --sections memory --counts 1,20,100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from density_cold import cold_start_section  # noqa: E402
from soak import FASHION, RESULTS, Server  # noqa: E402

from surge.bench.clients import HttpTransport  # noqa: E402
from surge.bench.loadgen import BenchRun, prepare_target, run_level  # noqa: E402

CONFIG = "max_batch_size: 64\nbatching: {max_queue_delay_ms: 2.0}\n"
PER_WORKER_NOTE = "extrapolated from the measured per-model figure"


# -- repositories and servers -------------------------------------------------------------
def build_repository(folder: Path, count: int, shared: bool, processes: int = 1) -> Path:
    """`count` copies of the fashion model (hard links where the file system allows), each
    with a dedicated worker or in the default group of `processes` processes."""
    worker = f"worker: {{processes: {processes}}}\n" if shared else ""
    repo = folder / (f"shared{processes}-{count}" if shared else f"dedicated-{count}")
    if repo.exists():
        return repo
    source = FASHION / "1" / "model.onnx"
    for i in range(count):
        version = repo / f"fashion-{i:03d}" / "1"
        version.mkdir(parents=True)
        try:
            os.link(source, version / "model.onnx")
        except OSError:
            shutil.copyfile(source, version / "model.onnx")
        (version.parent / "config.yaml").write_text(CONFIG + worker)
    return repo


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (workers, resource tracker)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return tree


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def start(repo: Path, folder: Path) -> tuple[Server, float]:
    """A server on `repo` and the seconds it took from launch to ready."""
    started = time.perf_counter()
    server = Server(repo, folder / f"{repo.name}.log")
    return server, time.perf_counter() - started


# -- memory and time to ready ---------------------------------------------------------------
def measure_start(folder: Path, count: int, shared: bool) -> dict[str, Any]:
    repo = build_repository(folder, count, shared)
    server, ready_s = start(repo, folder)
    try:
        time.sleep(1.0)  # let the last warm-ups settle
        tree = process_tree(server.process.pid)
        rss = sum(rss_bytes(p) for p in tree)
        cpu = sum(cpu_seconds(p) for p in tree)
    finally:
        server.stop()
    row = {"mode": "shared" if shared else "dedicated", "models": count,
           "processes": len(tree), "rss_mb": round(rss / 1e6, 1),
           "ready_s": round(ready_s, 2), "cpu_s": round(cpu, 2), "load_average": load_average(),
           "measured": True}
    print(f"{row['mode']:>9} {count:>4} models: {row['processes']:>3} processes, "
          f"{row['rss_mb']:8.1f} MB, ready in {row['ready_s']:6.2f} s, {row['cpu_s']:6.2f} CPU s "
          f"(load {row['load_average']})",
          flush=True)
    return row


def extrapolated(rows: list[dict[str, Any]], count: int) -> dict[str, Any] | None:
    """A dedicated run too large for this machine, from the per-model cost of the measured ones."""
    measured = sorted((r for r in rows if r["mode"] == "dedicated"), key=lambda r: r["models"])
    if len(measured) < 2:
        return None
    first, last = measured[0], measured[-1]
    per_model = (last["rss_mb"] - first["rss_mb"]) / (last["models"] - first["models"])
    return {"mode": "dedicated", "models": count, "processes": count + 2,
            "rss_mb": round(first["rss_mb"] + per_model * (count - first["models"]), 1),
            "ready_s": None, "cpu_s": None, "measured": False,
            "note": f"not run: {PER_WORKER_NOTE} ({per_model:.1f} MB per model)"}


def memory_section(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for count in args.counts:
        rows.append(measure_start(folder, count, shared=True))
        if count <= args.max_dedicated:
            rows.append(measure_start(folder, count, shared=False))
    for count in args.counts:
        if count > args.max_dedicated and (row := extrapolated(rows, count)) is not None:
            print(f"dedicated {count:>4} models: would need ~{row['rss_mb'] / 1e3:.1f} GB "
                  f"({row['note']})", flush=True)
            rows.append(row)
    return {"rows": rows}


# -- throughput over many models -----------------------------------------------------------
def zipf_weights(count: int, exponent: float) -> np.ndarray:
    ranks = np.arange(1, count + 1, dtype=np.float64)
    weights = ranks ** -exponent
    return weights / weights.sum()


def request_mix(url: str, models: list[str], weights: np.ndarray, draws: int) -> list[bytes]:
    """Prepared requests whose models follow `weights` (the clients cycle through them)."""
    per_model = {m: prepare_target(url, m, "http", variants=4).payloads for m in set(models)}
    picks = np.random.default_rng(0).choice(len(models), size=draws, p=weights)
    return [per_model[models[i]][n % 4] for n, i in enumerate(picks)]


def drive(url: str, payloads: list[bytes], clients: int, duration_s: float) -> BenchRun:
    host, port = url.removeprefix("http://").split(":")

    async def level() -> BenchRun:
        transport = HttpTransport(host, int(port))
        try:
            return await run_level(transport, payloads, concurrency=clients,
                                   duration_s=duration_s, warmup_s=2.0)
        finally:
            await transport.close()

    return asyncio.run(level())


def summary(name: str, run: BenchRun) -> dict[str, Any]:
    row = {"load": name, "throughput": round(run.throughput, 1), "p50_ms": round(run.p50_ms, 2),
           "p99_ms": round(run.p99_ms, 2), "ok": run.ok, "errors": run.errors,
           "load_average": load_average()}
    print(f"{name:>40}: {row['throughput']:8.1f} req/s, p50 {row['p50_ms']:7.2f} ms, "
          f"p99 {row['p99_ms']:7.2f} ms, errors {run.errors}  (load {row['load_average']})",
          flush=True)
    return row


def load_section(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Every server up at once, the loads interleaved over `--rounds` rounds: on a busy machine
    the load of the others drifts within minutes, and interleaving spreads that drift over all
    the cases alike. Each case reports the median round."""
    with contextlib.ExitStack() as servers:
        cases = load_cases(args, folder, servers)
        runs: dict[str, list[BenchRun]] = {name: [] for name, _, _ in cases}
        for round_ in range(args.rounds):
            for name, url, mix in cases:
                run = drive(url, mix, args.clients, args.duration)
                runs[name].append(run)
                print(f"round {round_ + 1}: {name}: {run.throughput:.1f} req/s "
                      f"(load {load_average()})", flush=True)
    rows = [summary(name, median_run(done)) for name, done in runs.items()]
    base = rows[0]["throughput"]
    ratios = {r["load"]: round(r["throughput"] / base, 3) for r in rows[1:]}
    print(f"throughput vs one model: {ratios}", flush=True)
    return {"clients": args.clients, "duration_s": args.duration, "rounds": args.rounds,
            "rows": rows, "ratio_vs_one_model": ratios}


def load_cases(args: argparse.Namespace, folder: Path, servers: contextlib.ExitStack
               ) -> list[tuple[str, str, list[bytes]]]:
    """(name, server URL, request mix): one model, then each group size x each mix; the
    servers stop when `servers` closes."""
    server, _ = start(build_repository(folder, 1, shared=False), folder)
    servers.callback(server.stop)
    cases = [("one model, dedicated worker", server.http,
              request_mix(server.http, ["fashion-000"], np.ones(1), args.draws))]
    names = [f"fashion-{i:03d}" for i in range(args.models)]
    mixes = (("uniform", np.full(args.models, 1 / args.models)),
             (f"zipf s={args.zipf}", zipf_weights(args.models, args.zipf)))
    for processes in args.processes:
        server, _ = start(build_repository(folder, args.models, True, processes), folder)
        servers.callback(server.stop)
        for mix, weights in mixes:
            cases.append((f"{args.models} models, group of {processes}, {mix}", server.http,
                          request_mix(server.http, names, weights, args.draws)))
    return cases


def median_run(runs: list[BenchRun]) -> BenchRun:
    """The round with the median throughput."""
    return sorted(runs, key=lambda r: r.throughput)[len(runs) // 2]


# Each section: (args, scratch folder) -> its JSON.
SECTIONS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "memory": memory_section,
    "load": load_section,
    "cold-start": cold_start_section,  # benchmarks/density_cold.py
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--counts", default="1,20,100,500",
                        type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--max-dedicated", type=int, default=20,
                        help="largest dedicated run (each model costs a ~95 MB process)")
    parser.add_argument("--models", type=int, default=100, help="models of the load section")
    parser.add_argument("--processes", default="1,2", type=lambda s: [int(c) for c in s.split(",")],
                        help="process counts of the shared group in the load section")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the loads")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the skewed mix")
    parser.add_argument("--draws", type=int, default=20_000, help="requests in each mix")
    parser.add_argument("--cold-requests", type=int, default=20,
                        help="cold-start: requests finding their model evicted, per mode")
    parser.add_argument("--cold-modes", default="dedicated",
                        help="cold-start: dedicated and/or shared workers")
    parser.add_argument("--json", type=Path, default=RESULTS / "density.json")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; expected one of {', '.join(SECTIONS)}")
    folder = Path(tempfile.mkdtemp(prefix="surge-density-", dir=RESULTS.parent))
    # Sections run separately share one file: each run replaces only the sections it ran.
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    results.update({"cores": os.cpu_count(), "load_average_start": load_average()})
    try:
        for section in sections:
            results[section] = SECTIONS[section](args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

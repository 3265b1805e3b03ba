"""Instances on Ray compute nodes against local worker processes, side by side in one run.

A Ray cluster on this machine (a head with no model CPUs, two compute nodes with one CPU each);
this process is the front end (a Ray driver) with one Engine serving every model:

1. ResNet-18 3x64x64 at 64 closed-loop clients: two single-core cluster instances against two
   single-threaded local workers: throughput ratio and p99.
2. Dispatch overhead: an identity model on payloads from 4 KB to 8 MB, one client, local and
   cluster, three tensor paths to the actor: the direct channel with shared memory (the nodes
   share this machine), the channel with the tensors on its socket (as to another machine),
   and Ray actor calls: p50 per batch and the front end's CPU per request; the difference
   from local is what the remote path adds.
3. Node loss under ResNet-18 load: a compute node is removed (a spare one waits, as a machine
   Ray's autoscaler adds would): failed requests against those in flight, requests left
   without an answer, seconds until throughput is back to 90% of what it was, and instances
   the heartbeat took for lost before the removal (false positives under load).

Each section records the load average beside its figures (a shared, busy machine).

Usage: .venv/bin/python benchmarks/cluster.py [--duration 8] [--json benchmarks/results/cluster.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

PAYLOADS = (4 << 10, 64 << 10, 1 << 20, 8 << 20)
RESNET = "resnet64"


@dataclass
class Level:
    model: str
    clients: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int


def write_models(root: Path) -> None:
    import onnx
    import torch
    from onnx import TensorProto, helper

    from surge.export import export_onnx
    from surge.zoo.resnet import resnet18

    torch.manual_seed(0)
    target = root / f"{RESNET}-local" / "1" / "model.onnx"
    export_onnx(resnet18(), (torch.zeros(2, 3, 64, 64),), target, ["image"], ["logits"])  # type: ignore[arg-type]
    twin = root / f"{RESNET}-cluster" / "1"
    twin.mkdir(parents=True)
    (twin / "model.onnx").write_bytes(target.read_bytes())
    batching = "max_batch_size: 16\nbatching: {max_queue_delay_ms: 2.0}\n"
    (root / f"{RESNET}-local" / "config.yaml").write_text(batching + "instances: 2\nthreads: 1\n")
    (root / f"{RESNET}-cluster" / "config.yaml").write_text(
        batching + "placement: cluster\n"
        "cluster: {instances: 2, cpus: 0.75, threads: 1, heartbeat_ms: 250}\n")
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, ["batch", "n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "echo", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for where in ("local", "cluster"):
        (root / f"echo-{where}" / "1").mkdir(parents=True)
        onnx.save(model, str(root / f"echo-{where}" / "1" / "model.onnx"))
        # Three engines' echo instances (one per tensor path) fit beside the two ResNet ones
        # (0.75 CPU each) on the two one-CPU compute nodes.
        place = "placement: cluster\ncluster: {instances: 1, cpus: 0.1}\n" if where == "cluster" \
            else "instances: 1\nthreads: 1\n"
        (root / f"echo-{where}" / "config.yaml").write_text("max_batch_size: 1\n" + place)


async def closed_loop(engine: Any, model: str, inputs: dict[str, np.ndarray], clients: int,
                      seconds: float) -> Level:
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                await engine.infer(model, None, inputs)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    latencies.sort()
    done = max(1, len(latencies))
    return Level(model, clients, len(latencies) / wall, statistics.median(latencies) * 1e3,
                 latencies[int(0.99 * (done - 1))] * 1e3, cpu / done * 1e6, errors)


def lost_instances(site: Any) -> float:
    """Instances the site's pools have taken for lost so far (any cause)."""
    return sum(sample.value for metric in site.metrics.lost.collect()
               for sample in metric.samples if sample.name.endswith("_total"))


async def node_loss(engine: Any, site: Any, cluster: Any, seconds: float) -> dict[str, float]:
    """Throughput per 0.5 s window around the loss of the node that holds an instance."""
    model = f"{RESNET}-cluster"
    image = {"image": np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)}
    done: list[float] = []
    failed = hung = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal failed, hung
        while time.perf_counter() < end:
            try:
                await asyncio.wait_for(engine.infer(model, None, image), 30.0)
                done.append(time.perf_counter())
            except TimeoutError:
                hung += 1  # no answer in 30 s
            except Exception:
                failed += 1

    # A spare node first (Ray starts nodes only from the main thread): the replacement goes
    # there, as it would to a machine the autoscaler adds.
    cluster.add_node(num_cpus=1)
    clients = [asyncio.create_task(client()) for _ in range(64)]
    await asyncio.sleep(seconds / 5)  # the rest is for the recovery
    lost_at = time.perf_counter()
    before = sum(1 for t in done if t > lost_at - 4.0) / 4.0
    lost_before = lost_instances(site)
    load = os.getloadavg()[0]
    pool = next(p for p in site.pools if p.model == model)
    # A node that holds one of the model's instances (the node list is in no set order).
    victim = next(n for n in cluster.list_all_nodes() if n.node_id == pool.live[0].node_id)
    await asyncio.to_thread(cluster.remove_node, victim)
    replaced = await replacement_ready(pool, lost_at, end)
    await asyncio.gather(*clients)
    # Two-second windows: a batch of 16 answers 16 requests at once, which would make one-
    # second windows jump by a third of the rate on these cores.
    back = next((t - lost_at for t in np.arange(lost_at, end - 2.0, 0.5)
                 if sum(1 for d in done if t <= d < t + 2.0) / 2.0 >= 0.9 * before),
                float("nan"))
    # Sustained: from then to the end of the run, on average.
    kept = next((t - lost_at for t in np.arange(lost_at, end - 2.0, 0.5)
                 if sum(1 for d in done if d >= t) / (end - t) >= 0.9 * before), float("nan"))
    rates = [sum(1 for d in done if t <= d < t + 2.0) / 2.0
             for t in np.arange(lost_at - 4.0, end - 2.0, 1.0)]  # from 4 s before the loss
    return {"before_per_s": before, "in_flight": 64, "failed": failed, "hung": hung,
            "per_s_from_4s_before": rates, "seconds_to_full_throughput": float(back),
            "seconds_to_sustained_throughput": float(kept),
            "seconds_to_replacement_ready": replaced, "lost_before_removal": lost_before,
            "load_average": load}


async def replacement_ready(pool: Any, lost_at: float, end: float) -> float:
    """Seconds from the loss until the pool, having seen it, has as many live instances as
    before again."""
    wanted, seen = pool.instances, False
    while time.perf_counter() < end:
        seen = seen or len(pool.live) < wanted
        if seen and len(pool.live) >= wanted:
            return time.perf_counter() - lost_at
        await asyncio.sleep(0.1)
    return float("nan")


PATHS = ("local", "shm", "socket", "ray")  # the overhead table's columns, in this order


async def overhead(engines: dict[str, Any], duration: float) -> list[dict[str, Any]]:
    """Per payload and path: local worker, cluster on the channel with shared memory, on the
    channel's socket, as Ray calls (one engine per cluster path, serving one instance)."""
    rows = []
    for size in PAYLOADS:
        payload = {"x": np.ones((1, size), np.uint8)}
        for path in PATHS:
            model = "echo-local" if path == "local" else "echo-cluster"
            engine = engines["shm" if path == "local" else path]
            await closed_loop(engine, model, payload, 1, 0.5)
            level = await closed_loop(engine, model, payload, 1, duration / 2)
            rows.append({"bytes": size, "path": path, "load_average": os.getloadavg()[0],
                         **asdict(level)})
    return rows


async def measure(root: Path, cluster: Any, args: argparse.Namespace) -> dict[str, Any]:
    from surge.cluster import ClusterSite
    from surge.engine import Engine
    from surge.repository import Repository

    site = ClusterSite(str(root))
    engine = Engine(Repository(root), cluster_pools=site)
    others = {"socket": Engine(Repository(root), models=["echo-cluster"],
                               cluster_pools=ClusterSite(str(root), shared_memory=False)),
              "ray": Engine(Repository(root), models=["echo-cluster"],
                            cluster_pools=ClusterSite(str(root), channel=False))}
    await engine.start()
    out: dict[str, Any] = {"throughput": [], "overhead": []}
    try:
        image = {"image": np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)}
        if not args.skip_throughput:
            for where in ("local", "cluster"):
                await closed_loop(engine, f"{RESNET}-{where}", image, 64, 2.0)  # warm up
                level = asdict(await closed_loop(engine, f"{RESNET}-{where}", image, 64,
                                                 args.duration))
                out["throughput"].append({**level, "load_average": os.getloadavg()[0]})
        if not args.skip_overhead:
            for other in others.values():
                await other.start()
            try:
                out["overhead"] = await overhead({"shm": engine, **others}, args.duration)
            finally:
                for other in others.values():
                    await other.stop(5.0)
        if not args.skip_node_loss:
            out["node_loss"] = await node_loss(engine, site, cluster, 5 * args.duration)
    finally:
        await engine.stop(5.0)
    return out


def render_throughput(out: dict[str, Any], console: Console) -> None:
    local, remote = out["throughput"]
    table = Table(title="ResNet-18 3x64x64, 64 clients: 2 cluster instances vs 2 local workers")
    for column in ("placement", "req/s", "p50 ms", "p99 ms", "front-end CPU us/req"):
        table.add_column(column)
    for name, level in (("local", local), ("cluster", remote)):
        table.add_row(name, f"{level['requests_per_s']:.1f}", f"{level['p50_ms']:.1f}",
                      f"{level['p99_ms']:.1f}", f"{level['cpu_us_per_request']:.0f}")
    console.print(table)
    console.print(f"cluster/local throughput {remote['requests_per_s'] / local['requests_per_s']:.2f}"
                  f" (target >= 0.85), p99 {remote['p99_ms'] / local['p99_ms']:.2f}x (<= 1.3)")


def render_overhead(out: dict[str, Any], console: Console) -> None:
    table = Table(title="Dispatch overhead, one client, identity model: p50 ms per batch "
                  "(added over local), front-end CPU us/req")
    table.add_column("payload")
    for path in PATHS:
        table.add_column(f"{path} p50" + (" (added)" if path != "local" else ""))
    for path in PATHS:
        table.add_column(f"CPU {path}")
    table.add_column("load")
    rows = out["overhead"]
    for start in range(0, len(rows), len(PATHS)):
        level = dict(zip(PATHS, rows[start:start + len(PATHS)], strict=True))
        local = level["local"]["p50_ms"]
        cells = [f"{local:.2f}"] + [f"{level[p]['p50_ms']:.2f} ({level[p]['p50_ms'] - local:+.2f})"
                                    for p in PATHS[1:]]
        table.add_row(f"{level['local']['bytes'] >> 10} KiB", *cells,
                      *(f"{level[p]['cpu_us_per_request']:.0f}" for p in PATHS),
                      f"{level['ray']['load_average']:.1f}")
    console.print(table)


def render(out: dict[str, Any], console: Console) -> None:
    if out["throughput"]:
        render_throughput(out, console)
    if out["overhead"]:
        render_overhead(out, console)
    if "node_loss" not in out:
        return
    loss = out["node_loss"]
    console.print(f"node loss under load (load average {loss['load_average']:.1f}): "
                  f"{loss['failed']} failed of {loss['in_flight']} in flight, {loss['hung']} "
                  f"hung, full throughput ({loss['before_per_s']:.0f}/s) back after "
                  f"{loss['seconds_to_full_throughput']:.1f} s, sustained after "
                  f"{loss['seconds_to_sustained_throughput']:.1f} s, replacement ready after "
                  f"{loss['seconds_to_replacement_ready']:.1f} s (targets: <= 1%, 0, <= 10 s); "
                  f"instances taken for lost before the removal: {loss['lost_before_removal']:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--skip-throughput", action="store_true", help="no ResNet-18 levels")
    parser.add_argument("--skip-overhead", action="store_true", help="no dispatch overhead")
    parser.add_argument("--skip-node-loss", action="store_true", help="no node removal")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    from surge.cluster import connect, disconnect

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_models(root)
        connect(cluster.address)
        try:
            out = asyncio.run(measure(root, cluster, args))
        finally:
            disconnect()
            cluster.shutdown()
    render(out, Console())
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

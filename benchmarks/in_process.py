"""Instances in worker processes (`placement: local`) vs on threads of the server (`in-process`),
side by side in one run, on the default model and on ResNet-18 3x64x64.

For each model and layout (instances x threads), the same config served both ways, the Engine in
this process (no sockets), the legs taking turns `--rounds` times:
- one closed-loop client: p50 latency and requests/s (where a worker's hand-off is most of
  the latency of a small model);
- open loop, Poisson arrivals at half the capacity measured first (64 closed-loop clients,
  local placement): p50 latency from each request's scheduled arrival (as benchmarks/
  surge_load.py counts it) and from when it was sent, and how late the generator's timer sent
  it (the event loop's timers have millisecond resolution);
- 64 closed-loop clients: requests/s (where the event loop and the instances contend for the
  GIL and the cores).

    .venv/bin/python benchmarks/in_process.py [--models fashion,resnet64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_models import BUILDERS, LoadModel  # noqa: E402
from surge_load import capacity as closed_loop  # noqa: E402
from surge_load import closed_loop_one  # noqa: E402

from surge.engine import Engine  # noqa: E402
from surge.repository import Repository  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLACEMENTS = ("local", "in-process")


def write_config(model: LoadModel, name: str, layout: tuple[int, int], placement: str) -> None:
    """The original model, no batching delay, `layout`, served from `placement`."""
    source = model.repo / "untuned"
    target = model.repo / name
    if not target.exists():
        shutil.copytree(source / "1", target / "1")
    config = {"name": name, "max_batch_size": 16, "batching": {"max_queue_delay_ms": 0.0},
              "instances": layout[0], "threads": layout[1], "placement": placement}
    (target / "config.yaml").write_text(yaml.safe_dump(config))


async def open_loop(engine: Engine, name: str, inputs: dict[str, np.ndarray], rate: float,
                    seconds: float) -> dict[str, float]:
    """Poisson arrivals; the first second is warm-up and not counted. A request refused at
    admission (queue full: on a busy machine the capacity measured first can overstate what
    is left for this leg) is counted in `refused`, not timed."""
    from surge.errors import QueueFullError

    from_schedule: list[float] = []
    from_send: list[float] = []
    late: list[float] = []
    refused = 0
    rng = random.Random(0)
    start = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()

    async def one(at: float) -> None:
        nonlocal refused
        sent = time.perf_counter() - start
        try:
            await engine.infer(name, None, inputs)
        except QueueFullError:
            refused += 1
            return
        if at >= 1.0:
            finished = time.perf_counter() - start
            from_schedule.append(finished - at)
            from_send.append(finished - sent)
            late.append(sent - at)

    at = 0.0
    while (at := at + rng.expovariate(rate)) < seconds:
        delay = at - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(at))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    if not from_schedule:
        raise SystemExit(f"{name}: no request answered after the first second of the open "
                         f"loop ({refused} refused): give it more --seconds")
    return {"p50_ms": statistics.median(from_schedule) * 1e3,
            "p50_from_send_ms": statistics.median(from_send) * 1e3,
            "send_late_p50_ms": statistics.median(late) * 1e3, "refused": float(refused)}


async def measure(model: LoadModel, name: str, rate: float | None,
                  args: argparse.Namespace) -> dict[str, Any]:
    engine = Engine(Repository(model.repo), models=[name])
    await engine.start()
    try:
        await closed_loop_one(engine, name, model.inputs, 0.5)  # warm-up
        p50_ms, per_s = await closed_loop_one(engine, name, model.inputs, args.seconds)
        result: dict[str, Any] = {"one_client": {"p50_ms": p50_ms, "per_s": per_s}}
        result["clients_64_per_s"] = await closed_loop(engine, name, model.inputs, args.seconds)
        if rate is not None:
            result["half_load"] = await open_loop(engine, name, model.inputs, rate,
                                                  args.seconds + 1.0)
        return result
    finally:
        await engine.stop(grace_s=10.0)


def mean_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each figure over the rounds (nested dicts alike)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = mean_of([r[key] for r in runs])
        else:
            out[key] = float(np.mean([r[key] for r in runs]))
    return out


async def run_model(model: LoadModel, layouts: list[tuple[int, int]],
                    args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for layout in layouts:
        names = {}
        for placement in PLACEMENTS:
            names[placement] = f"{placement.replace('-', '')}-{layout[0]}x{layout[1]}"
            write_config(model, names[placement], layout, placement)
        capacity = await closed_loop_capacity(model, names["local"], args.seconds)
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PLACEMENTS}
        for _ in range(args.rounds):
            for placement in PLACEMENTS:
                runs[placement].append(await measure(model, names[placement], capacity / 2,
                                                     args))
        row = {"model": model.name, "layout": f"{layout[0]}x{layout[1]}",
               "capacity_per_s": capacity, **{p: mean_of(runs[p]) for p in PLACEMENTS},
               "rounds": runs}
        print_row(row)
        rows.append(row)
    return rows


async def closed_loop_capacity(model: LoadModel, name: str, seconds: float) -> float:
    engine = Engine(Repository(model.repo), models=[name])
    await engine.start()
    try:
        await closed_loop(engine, name, model.inputs, 1.0)
        return await closed_loop(engine, name, model.inputs, seconds)
    finally:
        await engine.stop(grace_s=10.0)


def refused(half: dict[str, float]) -> str:
    """', N refused' when the open loop found the queue full N times, else ''."""
    return f", {half['refused']:.0f} refused" if half.get("refused") else ""


def print_row(row: dict[str, Any]) -> None:
    print(f"\n== {row['model']} {row['layout']} (capacity {row['capacity_per_s']:.0f}/s local)")
    for placement in PLACEMENTS:
        r = row[placement]
        half = r["half_load"]
        print(f"  {placement:10} 1 client p50 {r['one_client']['p50_ms']:6.3f} ms "
              f"{r['one_client']['per_s']:6.0f}/s | half load p50 {half['p50_ms']:6.2f} ms "
              f"(from send {half['p50_from_send_ms']:5.2f}, sent late {half['send_late_p50_ms']:4.2f}"
              f"{refused(half)}) | 64 clients {r['clients_64_per_s']:6.0f}/s")
    local, threads = row["local"], row["in-process"]
    print(f"  in-process / local: 1 client p50 "
          f"{threads['one_client']['p50_ms'] / local['one_client']['p50_ms']:.2f}x, half-load "
          f"p50 {threads['half_load']['p50_ms'] / local['half_load']['p50_ms']:.2f}x, 64 clients "
          f"{threads['clients_64_per_s'] / local['clients_64_per_s']:.2f}x requests/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fashion,resnet64")
    parser.add_argument("--layouts", default="1x2,2x1", help="instances x threads, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "in_process.json")
    args = parser.parse_args()
    layouts = [tuple(int(x) for x in text.split("x")) for text in args.layouts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="surge-in-process-") as tmp:
        for name in args.models.split(","):
            model = BUILDERS[name](Path(tmp) / name, 50.0)
            rows += asyncio.run(run_model(model, layouts, args))  # type: ignore[arg-type]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_average": os.getloadavg(), "seconds": args.seconds,
                                    "rows": rows}, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

"""A load trace against the static and the SLO-driven batching, side by side in one run.

For each configuration of the default model (`fashion`, served in process by the Engine with
its worker processes): the capacity is measured first (closed loop, 64 clients, the untuned
config), then an open-loop trace with Poisson arrivals is replayed: `--phase` seconds at half
that capacity, at `--surge` times it, and at half again. Every request carries the SLO as its
deadline, so what cannot be answered in time is refused at admission or expires in the queue.
Per 1-s window it reports p99, goodput (answers within the SLO per second) and shed requests;
then one closed-loop client's p50 on each configuration beside the in-process batch-1 time.

Configurations: `static` is the model's config.yaml as committed (2 ms delay); `slo` adds
`slo_p99_ms` (the run-time control: load-time probe, SLO batching). The tuned-for-peak static
config and the accuracy ladder of the issue are not part of this script.

    .venv/bin/python benchmarks/surge_load.py --phase 10 --slo-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from surge.engine import Engine
from surge.errors import DeadlineExceededError, QueueFullError
from surge.repository import Repository

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE_FASHION = ROOT / "examples" / "repository" / "fashion"
INPUT = {"image": np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)}


@dataclass
class Window:
    second: int
    offered: int
    p99_ms: float | None
    goodput: int  # answers within the SLO in this second
    shed: int  # refused at admission or expired in the queue


@dataclass
class Run:
    config: str
    windows: list[Window] = field(default_factory=list)
    closed_loop_p50_ms: float = 0.0
    closed_loop_per_s: float = 0.0


def make_repo(tmp: Path, slo_ms: float | None) -> Path:
    root = tmp / ("slo" if slo_ms else "static")
    shutil.copytree(EXAMPLE_FASHION, root / "fashion")
    path = root / "fashion" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    if slo_ms:
        config["slo_p99_ms"] = slo_ms
    path.write_text(yaml.safe_dump(config))
    return root


async def capacity(engine: Engine, seconds: float = 3.0, clients: int = 64) -> float:
    """Requests per second the engine answers under a closed loop of `clients`."""
    done = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await engine.infer("fashion", None, INPUT)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


async def trace(engine: Engine, rates: list[tuple[float, float]], slo_s: float) -> list[Window]:
    """Open-loop Poisson arrivals at each (rate, seconds); results binned by arrival second."""
    outcomes: list[tuple[float, float | None]] = []  # (arrival offset, latency or None = shed)
    rng = random.Random(0)
    start = time.perf_counter()

    async def one(offset: float) -> None:
        try:
            await engine.infer("fashion", None, INPUT, timeout_us=int(slo_s * 1e6))
            outcomes.append((offset, time.perf_counter() - start - offset))
        except (QueueFullError, DeadlineExceededError):
            outcomes.append((offset, None))

    tasks: list[asyncio.Task[None]] = []
    at = 0.0
    for rate, seconds in rates:
        phase_end = at + seconds
        while (at := at + rng.expovariate(rate)) < phase_end:
            delay = at - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at)))
        at = phase_end
    await asyncio.gather(*tasks)
    return windows(outcomes, slo_s)


def windows(outcomes: list[tuple[float, float | None]], slo_s: float) -> list[Window]:
    by_second: dict[int, list[float | None]] = {}
    for offset, latency in outcomes:
        by_second.setdefault(int(offset), []).append(latency)
    result = []
    for second, latencies in sorted(by_second.items()):
        answered = sorted(x for x in latencies if x is not None)
        p99 = answered[min(len(answered) - 1, int(0.99 * len(answered)))] if answered else None
        result.append(Window(second, len(latencies), p99 * 1e3 if p99 is not None else None,
                             sum(1 for x in answered if x <= slo_s),
                             sum(1 for x in latencies if x is None)))
    return result


async def closed_loop_one(engine: Engine, seconds: float = 3.0) -> tuple[float, float]:
    """p50 ms and requests/s of one closed-loop client."""
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await engine.infer("fashion", None, INPUT)
        latencies.append(time.perf_counter() - t0)
    return statistics.median(latencies) * 1e3, len(latencies) / seconds


def in_process_batch1_ms() -> float:
    runner = Repository(EXAMPLE_FASHION.parent).load("fashion").runner
    runner.warmup()
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        runner.run(INPUT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


async def measure(root: Path, name: str, rates: list[tuple[float, float]], slo_s: float) -> Run:
    engine = Engine(Repository(root), models=["fashion"])
    await engine.start()
    try:
        run = Run(name, await trace(engine, rates, slo_s))
        run.closed_loop_p50_ms, run.closed_loop_per_s = await closed_loop_one(engine)
        return run
    finally:
        await engine.stop(grace_s=10.0)


def print_runs(runs: list[Run], phase: float, batch1_ms: float) -> None:
    surge_seconds = range(int(phase), int(2 * phase))
    for run in runs:
        print(f"\n{run.config}: second offered p99_ms goodput shed")
        for w in run.windows:
            p99 = f"{w.p99_ms:7.1f}" if w.p99_ms is not None else "      -"
            print(f"  {w.second:3d} {w.offered:6d} {p99} {w.goodput:6d} {w.shed:5d}")
        during = [w for w in run.windows if w.second in surge_seconds]
        goodput = statistics.mean(w.goodput for w in during) if during else 0.0
        print(f"  surge goodput {goodput:.0f}/s; 1 client p50 {run.closed_loop_p50_ms:.2f} ms "
              f"({run.closed_loop_per_s:.0f}/s); in-process batch 1 {batch1_ms:.2f} ms")


async def main_async(args: argparse.Namespace) -> None:
    slo_s = args.slo_ms / 1e3
    with tempfile.TemporaryDirectory() as tmp:
        static_root = make_repo(Path(tmp), None)
        engine = Engine(Repository(static_root), models=["fashion"])
        await engine.start()
        try:
            cap = await capacity(engine)
        finally:
            await engine.stop(grace_s=10.0)
        print(f"capacity (closed loop, 64 clients, static config): {cap:.0f} requests/s")
        rates = [(cap / 2, args.phase), (cap * args.surge, args.phase), (cap / 2, args.phase)]
        runs = [await measure(static_root, "static", rates, slo_s),
                await measure(make_repo(Path(tmp), args.slo_ms), "slo", rates, slo_s)]
    batch1_ms = in_process_batch1_ms()
    print_runs(runs, args.phase, batch1_ms)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"capacity_per_s": cap, "slo_ms": args.slo_ms, "phase_s": args.phase,
           "in_process_batch1_ms": batch1_ms, "runs": [asdict(r) for r in runs]}
    (RESULTS / "surge_load.json").write_text(json.dumps(out, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", type=float, default=10.0, help="seconds per trace phase")
    parser.add_argument("--surge", type=float, default=3.0, help="surge rate / capacity")
    parser.add_argument("--slo-ms", type=float, default=50.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

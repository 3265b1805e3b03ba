"""Engine throughput against the in-process ceiling, side by side in one run.

For each model: the ceiling is the runner's best in-process throughput (items/s) over a sweep of
batch sizes, with every core as intra-op threads; then the Engine (scheduler + worker processes
+ shared memory) is driven in-process by closed-loop clients (one item per request) at each
concurrency, and its throughput is reported as a ratio of that ceiling. Front-end CPU per
request is the front-end process's CPU time (dispatcher, result handling and the client
coroutines together) divided by the requests served.

    .venv/bin/python benchmarks/engine.py --duration 8 --concurrency 1,16,64,256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE_FASHION = ROOT / "examples" / "repository" / "fashion"


@dataclass
class Level:
    concurrency: int
    requests_per_s: float
    ratio: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    frontend_cpu_us: float
    errors: int


@dataclass
class ModelResult:
    model: str
    input_shape: list[int]
    ceiling_per_s: float
    ceiling_batch: int
    ceiling_sweep: dict[int, float]
    engine_config: str
    levels: list[Level] = field(default_factory=list)


# -- model preparation ---------------------------------------------------------------------------
def _export(module: object, shape: tuple[int, ...], path: Path, input_name: str,
            output_name: str) -> None:
    import torch

    from surge.export import export_onnx

    torch.manual_seed(0)
    export_onnx(module, (torch.zeros(2, *shape),), path, [input_name], [output_name])  # type: ignore[arg-type]


def prepare(root: Path, name: str, config: str) -> tuple[str, tuple[int, ...]]:
    """Write model `name` into the repository `root`; returns its input name and item shape."""
    target = root / name / "1" / "model.onnx"
    if name == "fashion":
        trained = EXAMPLE_FASHION / "1" / "model.onnx"
        if trained.is_file():
            target.parent.mkdir(parents=True)
            shutil.copy(trained, target)
        else:  # the same architecture with random weights: throughput does not depend on them
            from surge.zoo.fashion import fashion_cnn

            _export(fashion_cnn(), (1, 28, 28), target, "image", "logits")
        shape: tuple[int, ...] = (1, 28, 28)
    else:
        from surge.zoo.resnet import resnet18

        side = int(name.removeprefix("resnet"))
        shape = (3, side, side)
        _export(resnet18(), shape, target, "image", "logits")
    (root / name / "config.yaml").write_text(config)
    return "image", shape


# -- ceiling --------------------------------------------------------------------------------------
def ceiling(root: Path, name: str, input_name: str, shape: tuple[int, ...], threads: int,
            batches: list[int], seconds: float) -> dict[int, float]:
    """Items/s of the in-process runner at each batch size."""
    from surge.repository import Repository
    from surge.runtimes import RunnerOptions

    runner = Repository(root).load(name, options=RunnerOptions(intra_op_threads=threads)).runner
    rng = np.random.default_rng(0)
    sweep: dict[int, float] = {}
    for batch in batches:
        x = {input_name: rng.random((batch, *shape), dtype=np.float32)}
        runner.run(x)
        runs, start = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - start < seconds:
            runner.run(x)
            runs += 1
        sweep[batch] = runs * batch / (time.perf_counter() - start)
    return sweep


# -- engine ---------------------------------------------------------------------------------------
async def drive(root: Path, name: str, input_name: str, shape: tuple[int, ...],
                levels: list[int], seconds: float, best: float) -> list[Level]:
    from surge.repository import Repository
    from surge.server.engine import Engine

    engine = Engine(Repository(root), models=[name])
    await engine.start()
    x = {input_name: np.random.default_rng(1).random((1, *shape), dtype=np.float32)}
    results = []
    try:
        for concurrency in levels:
            results.append(await _level(engine, name, x, concurrency, seconds, best))
    finally:
        await engine.stop(grace_s=10.0)
    return results


async def _level(engine: object, name: str, x: dict[str, np.ndarray], concurrency: int,
                 seconds: float, best: float) -> Level:
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop = False

    async def client() -> None:
        nonlocal errors
        while not stop:
            start = time.perf_counter()
            try:
                await engine.infer(name, None, x)  # type: ignore[attr-defined]
            except Exception:
                errors += measuring
                continue
            if measuring:
                latencies.append(time.perf_counter() - start)

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(min(2.0, seconds / 3))  # reach the steady state first
    stats0 = engine.stats(name)  # type: ignore[attr-defined]
    measuring = True
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stats1 = engine.stats(name)  # type: ignore[attr-defined]
    stop = True
    await asyncio.gather(*tasks)
    done = len(latencies)
    executions = max(1, stats1.execution_count - stats0.execution_count)
    latencies.sort()
    return Level(
        concurrency, done / wall, done / wall / best,
        statistics.median(latencies) * 1e3 if latencies else 0.0,
        latencies[int(0.99 * (done - 1))] * 1e3 if latencies else 0.0,
        (stats1.inference_count - stats0.inference_count) / executions,
        cpu / max(done, 1) * 1e6, errors,
    )


def run_model(name: str, args: argparse.Namespace) -> ModelResult:
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or cores // args.instances
    config = (f"max_batch_size: {args.max_batch}\ninstances: {args.instances}\n"
              f"threads: {threads}\nbatching: {{max_queue_delay_ms: {args.delay_ms}}}\n"
              f"queue: {{max_size: 1024}}\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        input_name, shape = prepare(root, name, config)
        batches = sorted({1, 8, 16, 32, 64} | {args.max_batch})
        sweep = ceiling(root, name, input_name, shape, cores, batches, args.ceiling_seconds)
        best_batch = max(sweep, key=lambda b: sweep[b])
        levels = asyncio.run(drive(root, name, input_name, shape, args.concurrency,
                                   args.duration, sweep[best_batch]))
    return ModelResult(name, list(shape), sweep[best_batch], best_batch, sweep,
                       config.replace("\n", "; ").strip("; "), levels)


def render(results: list[ModelResult], console: Console) -> None:
    table = Table(title="Engine throughput vs in-process ceiling (items/s)")
    for column in ("model", "ceiling (batch)", "concurrency", "engine/s", "ratio", "p50 ms",
                   "p99 ms", "mean batch", "front-end CPU us/req", "errors"):
        table.add_column(column, justify="right")
    for result in results:
        for i, level in enumerate(result.levels):
            table.add_row(
                result.model if i == 0 else "",
                f"{result.ceiling_per_s:.0f} ({result.ceiling_batch})" if i == 0 else "",
                str(level.concurrency), f"{level.requests_per_s:.0f}", f"{level.ratio:.2f}",
                f"{level.p50_ms:.1f}", f"{level.p99_ms:.1f}", f"{level.mean_batch:.1f}",
                f"{level.frontend_cpu_us:.0f}", str(level.errors),
            )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fashion,resnet64,resnet224")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="0: cores / instances")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine.json")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    console = Console()
    results = []
    for name in args.models.split(","):
        console.print(f"[bold]{name}[/bold] ...")
        results.append(run_model(name, args))
    render(results, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"cores": len(os.sched_getaffinity(0)), "args": {k: str(v) for k, v in
                                                              vars(args).items()},
               "results": [asdict(r) for r in results]}
    args.out.write_text(json.dumps(payload, indent=2))
    console.print(f"saved {args.out}")


if __name__ == "__main__":
    main()

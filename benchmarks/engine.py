"""Engine throughput against the in-process ceiling, side by side in one run.

For each model: the ceiling is the runner's best in-process throughput (items/s) over a sweep of
batch sizes, with every core as intra-op threads; then the Engine (scheduler + worker processes
+ shared memory) is driven in-process by closed-loop clients (one item per request) at each
concurrency, and its throughput is reported as a ratio of the ceiling. On a shared machine the
ceiling drifts with other load, so it is measured again at its best batch size right before and
right after every engine level, and each level's ratio uses the mean of those two. Front-end
CPU per request is the front-end process's CPU time (dispatcher, result handling and the client
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
from concurrent.futures import ThreadPoolExecutor
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
    ceiling_per_s: float  # mean of the ceiling measured just before and just after
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
    ceiling_best: str  # sessions x threads @ batch size
    ceiling_sweep: dict[str, float]
    engine_config: str
    levels: list[Level] = field(default_factory=list)


# -- model preparation ---------------------------------------------------------------------------
def _export(module: object, shape: tuple[int, ...], path: Path, input_name: str,
            output_name: str) -> None:
    import torch

    from surge.export import export_onnx

    torch.manual_seed(0)
    export_onnx(module, (torch.zeros(2, *shape),), path, [input_name], [output_name])  # type: ignore[arg-type]


def prepare(root: Path, name: str) -> tuple[str, tuple[int, ...]]:
    """Write model `name` into the repository `root`; returns its input name and item shape."""
    target = root / name / "1" / "model.onnx"
    if name == "fashion":
        trained = EXAMPLE_FASHION / "1" / "model.onnx"
        if trained.is_file():
            target.parent.mkdir(parents=True)
            shutil.copy(trained, target)
        else:  # the same architecture with random weights: throughput does not depend on them
            from surge_examples.fashion.model import fashion_cnn

            _export(fashion_cnn(), (1, 28, 28), target, "image", "logits")
        shape: tuple[int, ...] = (1, 28, 28)
    else:
        from surge.zoo.resnet import resnet18

        side = int(name.removeprefix("resnet"))
        shape = (3, side, side)
        _export(resnet18(), shape, target, "image", "logits")
    return "image", shape


# -- ceiling --------------------------------------------------------------------------------------
class Ceiling:
    """`sessions` runners of the model in this process, each with `threads` intra-op threads,
    run side by side from Python threads (the engines release the GIL)."""

    def __init__(self, root: Path, name: str, input_name: str, shape: tuple[int, ...],
                 sessions: int, threads: int) -> None:
        from surge.repository import Repository
        from surge.runtimes import RunnerOptions

        options = RunnerOptions(intra_op_threads=threads)
        self.runners = [Repository(root).load(name, options=options).runner
                        for _ in range(sessions)]
        self.input_name, self.shape = input_name, shape
        self.layout = f"{sessions}x{threads}"

    def measure(self, batch: int, seconds: float, min_runs: int = 3) -> float:
        """Items/s at `batch` rows per run, all sessions together."""
        x = {self.input_name: np.random.default_rng(0).random((batch, *self.shape),
                                                             dtype=np.float32)}

        def loop(runner: object) -> int:
            runner.run(x)  # type: ignore[attr-defined]
            runs, start = 0, time.perf_counter()
            while runs < min_runs or time.perf_counter() - start < seconds:
                runner.run(x)  # type: ignore[attr-defined]
                runs += 1
            return runs

        start = time.perf_counter()
        with ThreadPoolExecutor(len(self.runners)) as pool:
            runs = sum(pool.map(loop, self.runners))
        return runs * batch / (time.perf_counter() - start)


def best_ceiling(root: Path, name: str, input_name: str, shape: tuple[int, ...], cores: int,
                 batches: list[int], seconds: float) -> tuple[Ceiling, int, dict[str, float]]:
    """Sweep layouts (one session on every core, one single-thread session per core) and
    batch sizes; returns the best layout, its batch size and the whole sweep."""
    layouts = sorted({(1, cores), (cores, 1)})
    sweep: dict[str, float] = {}
    best: tuple[float, Ceiling, int] | None = None
    for sessions, threads in layouts:
        ceiling = Ceiling(root, name, input_name, shape, sessions, threads)
        for batch in batches:
            rate = ceiling.measure(batch, seconds)
            sweep[f"{ceiling.layout}@{batch}"] = rate
            if best is None or rate > best[0]:
                best = (rate, ceiling, batch)
    assert best is not None
    return best[1], best[2], sweep


# -- engine ---------------------------------------------------------------------------------------
async def drive(root: Path, name: str, ceiling: Ceiling, best_batch: int,
                args: argparse.Namespace) -> list[Level]:
    from surge.engine import Engine
    from surge.repository import Repository

    engine = Engine(Repository(root), models=[name])
    await engine.start()
    x = {ceiling.input_name: np.random.default_rng(1).random((1, *ceiling.shape),
                                                            dtype=np.float32)}
    results = []
    try:
        for concurrency in args.concurrency:
            before = ceiling.measure(best_batch, args.ceiling_seconds, min_runs=2)
            # Long enough for several full batches of a slow model, whatever --duration says.
            batch_s = best_batch / before
            seconds = max(args.duration, 6 * batch_s)
            level = await _level(engine, name, x, concurrency, seconds, warmup=2 * batch_s)
            after = ceiling.measure(best_batch, args.ceiling_seconds, min_runs=2)
            level.ceiling_per_s = (before + after) / 2
            level.ratio = level.requests_per_s / level.ceiling_per_s
            results.append(level)
    finally:
        await engine.stop(grace_s=10.0)
    return results


async def _level(engine: object, name: str, x: dict[str, np.ndarray], concurrency: int,
                 seconds: float, warmup: float) -> Level:
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
    await asyncio.sleep(max(1.0, warmup))  # reach the steady state first
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
        concurrency, done / wall, 0.0, 0.0,
        statistics.median(latencies) * 1e3 if latencies else 0.0,
        latencies[int(0.99 * (done - 1))] * 1e3 if latencies else 0.0,
        (stats1.inference_count - stats0.inference_count) / executions,
        cpu / max(done, 1) * 1e6, errors,
    )


def _config(args: argparse.Namespace, ceiling: Ceiling) -> str:
    """The engine's model config: the ceiling's best layout unless given on the command line."""
    sessions, threads = (int(n) for n in ceiling.layout.split("x"))
    instances = args.instances or sessions
    threads = args.threads or (threads if not args.instances else 0)
    return (f"max_batch_size: {args.max_batch}\ninstances: {instances}\nthreads: {threads}\n"
            f"batching: {{max_queue_delay_ms: {args.delay_ms}}}\nqueue: {{max_size: 1024}}\n")


def run_model(name: str, args: argparse.Namespace) -> ModelResult:
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        input_name, shape = prepare(root, name)
        batches = sorted({8, 16, 32, 64} | {args.max_batch})
        ceiling, best_batch, sweep = best_ceiling(root, name, input_name, shape, cores, batches,
                                                  args.ceiling_seconds)
        config = _config(args, ceiling)
        (root / name / "config.yaml").write_text(config)
        levels = asyncio.run(drive(root, name, ceiling, best_batch, args))
    return ModelResult(name, list(shape), sweep[f"{ceiling.layout}@{best_batch}"],
                       f"{ceiling.layout}@{best_batch}", sweep,
                       config.replace("\n", "; ").strip("; "), levels)


def render(results: list[ModelResult], console: Console) -> None:
    table = Table(title="Engine throughput vs in-process ceiling (items/s)")
    for column in ("model", "ceiling layout", "concurrency", "ceiling/s", "engine/s", "ratio",
                   "p50 ms",
                   "p99 ms", "mean batch", "front-end CPU us/req", "errors"):
        table.add_column(column, justify="right")
    for result in results:
        for i, level in enumerate(result.levels):
            table.add_row(
                result.model if i == 0 else "",
                result.ceiling_best if i == 0 else "",
                str(level.concurrency), f"{level.ceiling_per_s:.1f}",
                f"{level.requests_per_s:.1f}", f"{level.ratio:.2f}",
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
    parser.add_argument("--instances", type=int, default=0,
                        help="engine instances; 0: the ceiling's best layout")
    parser.add_argument("--threads", type=int, default=0, help="0: cores / instances")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine.json")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    console = Console(width=160)
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

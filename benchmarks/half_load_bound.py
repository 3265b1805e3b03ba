"""The best half-load p50 any scheduler could reach with a rung on these cores: the floor under
`surge_load.py`'s half-load target.

For each model of the load trace (the default model, ResNet-18 at 3x64x64) and each rung
(original, int8-static), the batch times t(n) are measured in this process with ONNX Runtime
alone (no server, no worker hop, the threads spinning, batches back to back), for two layouts
of the cores: one instance on all of them, and one single-threaded instance per core. An ideal
server is then simulated on those times: Poisson arrivals at the trace's half-load rate, no
front-end work, no hand-off, no timer lateness; whenever an instance is free it takes every
queued request (up to the max batch) at once. Its p50 is a floor for that rung and layout: a
real server also spends the same cores on HTTP or the engine's event loop. The target is the
trace's: 1.3 x the in-process batch-1 time (`surge_load.in_process_batch1_ms`) + 1 ms.

`--trace FILE` reads the capacities (and so the half-load rates) from a `surge_load.py` result
and prints its measured half-load p50s beside the floors; else `--capacity name=rate,...`.

    .venv/bin/python benchmarks/half_load_bound.py --trace benchmarks/results/surge_load_run14.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from load_models import BUILDERS, LoadModel  # noqa: E402
from surge_load import in_process_batch1_ms  # noqa: E402

CORES = os.cpu_count() or 1
BATCHES = (1, 2, 3, 4, 6, 8, 12, 16)
REQUESTS = 200_000


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def batch_times(path: Path, sample: np.ndarray, threads: int, seconds: float) -> dict[int, float]:
    """Median seconds a batch of n takes, n in BATCHES, back to back (the fastest case)."""
    run = session(path, threads)
    name = run.get_inputs()[0].name
    times: dict[int, float] = {}
    for n in BATCHES:
        feed = {name: np.repeat(sample, n, axis=0)}
        run.run(None, feed)
        samples: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(samples) < 5:
            start = time.perf_counter()
            run.run(None, feed)
            samples.append(time.perf_counter() - start)
        times[n] = statistics.median(samples)
    return times


def time_of(times: dict[int, float], n: int) -> float:
    """t(n), linear between the measured sizes."""
    sizes = sorted(times)
    return float(np.interp(n, sizes, [times[s] for s in sizes]))


def ideal_p50_ms(times: dict[int, float], instances: int, rate: float, max_batch: int,
                 seed: int = 0) -> float:
    """p50 latency of the ideal greedy batcher: `instances` servers with batch times `times`."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, REQUESTS))
    free_at = [0.0] * instances
    queue: deque[float] = deque()
    latencies: list[float] = []
    index = 0
    while index < len(arrivals) or queue:
        server = min(range(instances), key=free_at.__getitem__)
        now = free_at[server]
        if not queue:  # idle until the next arrival
            now = max(now, arrivals[index])
        while index < len(arrivals) and arrivals[index] <= now:
            queue.append(arrivals[index])
            index += 1
        batch = [queue.popleft() for _ in range(min(len(queue), max_batch))]
        done = now + time_of(times, len(batch))
        latencies.extend(done - arrival for arrival in batch)
        free_at[server] = done
    return float(np.median(latencies[len(latencies) // 10:]) * 1e3)


def rung_paths(model: LoadModel) -> dict[str, Path]:
    config = model.repo / "adaptive"
    return {"original": config / "1" / "model.onnx",
            "int8-static": config / "variants" / "int8-static" / "model.onnx"}


def measured(trace: dict[str, Any] | None, name: str) -> dict[str, float]:
    """The trace's half-load p50 per configuration, and its target."""
    if trace is None:
        return {}
    for entry in trace["models"]:
        if entry["name"] == name:
            out = {run["config"]: run["summary"]["half_load_p50_ms"] for run in entry["runs"]}
            out["target"] = entry["runs"][0]["summary"]["half_load_p50_target_ms"]
            out["capacity"] = entry["capacity_per_s"]
            return out
    return {}


def bound_model(model: LoadModel, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    sample = next(iter(model.inputs.values()))
    reference_ms = in_process_batch1_ms(model.onnx, model.inputs)  # the trace's own reference
    rows = []
    for rung, path in rung_paths(model).items():
        for instances, threads in ((1, CORES), (CORES, 1)):
            times = batch_times(path, sample, threads, args.seconds)
            rows.append({"rung": rung, "layout": f"{instances}x{threads}",
                         "batch_ms": {n: t * 1e3 for n, t in times.items()},
                         "busy_at_batch_1": rate * times[1] / instances,
                         "ideal_p50_ms": ideal_p50_ms(times, instances, rate, args.max_batch)})
    return {"name": model.name, "half_load_per_s": rate, "batch1_ms": reference_ms,
            "target_ms": 1.3 * reference_ms + 1.0, "rows": rows}


def print_model(result: dict[str, Any], seen: dict[str, float]) -> None:
    print(f"\n{result['name']}: half load {result['half_load_per_s']:.0f}/s, in-process batch 1 "
          f"{result['batch1_ms']:.2f} ms, target {result['target_ms']:.2f} ms")
    print(f"{'rung':12} {'layout':>6} {'t(1) ms':>8} {'t(16) ms':>9} {'busy@b1':>8} "
          f"{'ideal p50':>10}")
    for row in result["rows"]:
        print(f"{row['rung']:12} {row['layout']:>6} {row['batch_ms'][1]:8.2f} "
              f"{row['batch_ms'][16]:9.2f} {row['busy_at_batch_1']:8.2f} "
              f"{row['ideal_p50_ms']:10.2f}")
    if seen:
        print("measured in the trace: " + ", ".join(
            f"{config} {value:.2f} ms" for config, value in seen.items()
            if config in ("untuned", "peak", "adaptive")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, help="a surge_load.py result JSON")
    parser.add_argument("--capacity", default="", help="name=requests/s,... (without --trace)")
    parser.add_argument("--models", default="fashion,resnet64")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.0, help="per batch size")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                        / "half_load_bound.json")
    args = parser.parse_args()
    trace = json.loads(args.trace.read_text()) if args.trace else None
    capacities = dict(p.split("=") for p in args.capacity.split(",") if p)
    results = []
    with tempfile.TemporaryDirectory(prefix="surge-bound-") as tmp:
        for name in args.models.split(","):
            seen = measured(trace, name)
            capacity = float(capacities.get(name, seen.get("capacity", 0.0)))
            if capacity <= 0:
                sys.exit(f"half_load_bound: no capacity for {name!r}: give --trace or --capacity")
            model = BUILDERS[name](Path(tmp), 50.0)
            result = bound_model(model, capacity / 2, args)
            result["measured_p50_ms"] = seen
            print_model(result, seen)
            results.append(result)
    args.out.write_text(json.dumps({"cores": CORES, "models": results}, indent=1))
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()

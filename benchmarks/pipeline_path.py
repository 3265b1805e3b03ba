"""The pipeline's own per-request path, without sockets or worker processes: front-end CPU per
request of a pipeline (a no-op processor -> a model -> a no-op processor) against the same model
with the same two no-op calls made by hand, in one process.

The Engine serves both from an in-process pool that answers each batch on the next loop
iteration (its outputs are its inputs), so what is timed is the front end's Python: the engine's
driver and scheduler in both legs, and in the pipeline leg also what the pipeline itself does per
request (validation, the step loop, the per-step metrics and statistics). Closed-loop client
coroutines call `Engine.infer`; CPU is this process's (`time.process_time`), so the figure holds
on a busy machine. In each process the legs take turns `--inner` times (median); `--src` runs
the same measurement against another source tree (another checkout's `src`), a process per
tree in turn `--rounds` times, for a before/after side by side (medians over the processes).

    .venv/bin/python benchmarks/pipeline_path.py [--clients 64] [--seconds 2] [--src DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 4
MODEL = "max_batch_size: 32\ninstances: 2\nbatching: {max_queue_delay_ms: 0.5}\n"
PIPELINE = f"""\
kind: pipeline
max_batch_size: 32
inputs: [{{name: values, datatype: FP32, shape: [-1, {WIDTH}]}}]
outputs: [{{name: out, datatype: FP32, shape: [-1, {WIDTH}]}}]
steps:
  - {{name: pre, processor: "__main__:passthrough", inputs: {{x: values}}, outputs: {{x: ready}}}}
  - {{name: model, model: m, inputs: {{x: ready}}, outputs: {{y: y}}}}
  - {{name: post, processor: "__main__:passthrough", inputs: {{x: y}}, outputs: {{x: out}}}}
"""


def describe_passthrough(params: Mapping[str, Any]) -> Any:
    from surge.processors import ProcessorSpec
    from surge.runtimes.base import TensorSpec

    spec = {"x": TensorSpec("x", "FP32", (-1, WIDTH))}
    return ProcessorSpec(spec, spec)


def passthrough(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A processor that does nothing: only the pipeline's machinery around it is timed."""
    return {"x": inputs["x"]}


class EchoPool:
    """The instances of `m`, in process: each batch answered on the next loop iteration with
    its own inputs (y = x), so the front end's Python is all that costs CPU."""

    def __init__(self, spec: Any, events: Any) -> None:
        from surge.runtimes.base import Signature, TensorSpec

        self.events = events
        self.signature = Signature((TensorSpec("x", "FP32", (-1, WIDTH)),),
                                   (TensorSpec("y", "FP32", (-1, WIDTH)),),
                                   batched=True, max_batch_size=32, platform="echo")
        self.instances = spec.config.instances
        self.busy = 0
        self.ready = False

    @property
    def idle_count(self) -> int:
        return self.instances * 2 - self.busy

    @property
    def idle_workers(self) -> int:
        return max(0, self.instances - self.busy)

    async def start(self) -> None:
        self.ready = True

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.ready = False

    def devices(self) -> tuple[str, ...]:
        return ("cpu",) * self.instances

    def dispatch(self, batch: Any) -> None:
        self.busy += 1
        asyncio.get_running_loop().call_soon(self._answer, batch)

    def _answer(self, batch: Any) -> None:
        from surge.workers.messages import BatchDone
        from surge.workers.pool import BatchResult

        self.busy -= 1
        x = np.concatenate([request.inputs["x"] for request in batch.requests])
        self.events.on_done(batch, {"y": x}, None, BatchResult(BatchDone(batch.id), 1e-5))


Call = Callable[[], Awaitable[object]]


async def _clients(call: Call, clients: int, seconds: float) -> tuple[int, float]:
    """Requests done and process CPU seconds over `seconds` of `clients` closed-loop clients."""
    done = 0

    async def client(until: float) -> None:
        nonlocal done
        while time.monotonic() < until:
            await call()
            done += 1

    warm = time.monotonic() + min(1.0, seconds)
    await asyncio.gather(*(client(warm) for _ in range(clients)))
    done = 0
    cpu = time.process_time()
    until = time.monotonic() + seconds
    await asyncio.gather(*(client(until) for _ in range(clients)))
    return done, time.process_time() - cpu


def _legs(engine: Any) -> dict[str, Call]:
    from surge.processors import declares

    declares(describe_passthrough, inline=True)(passthrough)
    values = {"values": np.ones((1, WIDTH), np.float32)}

    async def model() -> object:  # the pipeline's work by hand: the same calls, no pipeline
        ready = passthrough({"x": values["values"]}, {})
        found = await engine.infer("m", None, {"x": ready["x"]}, outputs=["y"])
        return passthrough({"x": found["y"]}, {})

    async def pipeline() -> object:
        return await engine.infer("p", None, values)

    return {"model": model, "pipeline": pipeline}


async def measure(clients: int, seconds: float, rounds: int) -> dict[str, Any]:
    from surge.engine import Engine
    from surge.repository import Repository

    with tempfile.TemporaryDirectory(prefix="surge-pipeline-path-") as tmp:
        (Path(tmp) / "m" / "1").mkdir(parents=True)
        (Path(tmp) / "m" / "config.yaml").write_text(MODEL)
        (Path(tmp) / "p").mkdir()
        (Path(tmp) / "p" / "config.yaml").write_text(PIPELINE)
        engine = Engine(Repository(tmp), pool_factory=EchoPool)
        legs = _legs(engine)
        await engine.start()
        gc.collect()
        gc.freeze()  # as `surge serve` does after loading: no full collection walks the start
        runs: dict[str, list[float]] = {name: [] for name in legs}
        try:
            for _ in range(rounds):
                for name, call in legs.items():
                    count, cpu = await _clients(call, clients, seconds)
                    runs[name].append(cpu / max(1, count) * 1e6)
            steps = getattr(engine.stats("p"), "steps", {})
        finally:
            await engine.stop(1.0)
    medians = {name: float(np.median(values)) for name, values in runs.items()}
    inline = all(step["inline_calls"] == step["calls"] for step in steps.values())
    return {"cpu_us_per_request": medians, "runs": runs, "steps_inline": inline,
            "pipeline_own_us": medians["pipeline"] - medians["model"]}


def one(args: argparse.Namespace) -> None:
    import uvloop

    print(json.dumps(uvloop.run(measure(args.clients, args.seconds, args.rounds))))


def run_tree(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, __file__, "--one", "--clients", str(args.clients),
               "--seconds", str(args.seconds), "--rounds", str(args.inner)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inner", type=int, default=3,
                        help="legs in turn this many times in each process (median)")
    parser.add_argument("--src", type=Path, help="another source tree to compare against")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "pipeline_path.json")
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    trees = {"this tree": ROOT / "src"} | ({"--src": args.src.resolve()} if args.src else {})
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(args.rounds):  # alternate, so drifting load hits both alike
        for name, src in trees.items():
            runs[name].append(run_tree(src, args))
    summary = {name: {leg: float(np.median([r["cpu_us_per_request"][leg] for r in rows]))
                      for leg in ("model", "pipeline")} for name, rows in runs.items()}
    for name, legs in summary.items():
        legs["pipeline_own"] = float(np.median([r["pipeline_own_us"] for r in runs[name]]))
        print(f"{name:10} model + 2 no-op calls by hand {legs['model']:6.1f} us, pipeline "
              f"{legs['pipeline']:6.1f} us, the pipeline's own {legs['pipeline_own']:5.1f} us "
              "per request (front-end CPU, medians)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"clients": args.clients, "load_average": os.getloadavg(),
                                    "median_cpu_us": summary, "runs": runs,
                                    "trees": {k: str(v) for k, v in trees.items()}}, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

"""What the accuracy ladder adds to a request's path: event-loop CPU per request of the default
model served three ways, in one process, the Engine in process with worker processes:

- `plain`: int8-static with `slo_p99_ms` (the ladder's cheap rung as a model of its own);
- `pinned`: the ladder [original, int8-static] with every request pinned to int8-static, so the
  same work is computed and only the laddered path differs;
- `ladder`: the same ladder, unpinned (at this load it serves from the original).

Two figures a leg: answered (64 closed-loop client coroutines calling `Engine.infer`: answers/s
and the event-loop thread's CPU per answer, `time.thread_time`) and refused (requests with a
deadline of 1 us, refused at admission one after another: CPU per refusal; in a surge most
requests take this path). `--src DIR` runs the same measurement against another source tree
(e.g. a checkout of an earlier commit's `src`) in its own process, alternating `--rounds` times.

    .venv/bin/python benchmarks/ladder_path.py [--seconds 4] [--rounds 2] [--src DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
LEGS = ("plain", "pinned", "ladder")
REFUSALS = 20_000


def repository(work: Path) -> tuple[Path, Any]:
    """The load benchmark's default-model repository plus `plain` (int8-static with the SLO)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from load_models import BUILDERS
    from surge_load import place_adaptive

    model = BUILDERS["fashion"](work / "fashion", 50.0)
    place_adaptive(model, "local")
    plain = model.repo / "plain"
    shutil.copytree(model.repo / "peak", plain)
    config = yaml.safe_load((plain / "config.yaml").read_text())
    config.update(name="plain", slo_p99_ms=50.0)
    (plain / "config.yaml").write_text(yaml.safe_dump(config))
    return model.repo, model.inputs


async def answered(engine: Any, model: str, inputs: Any, pin: str | None,
                   seconds: float) -> tuple[float, float]:
    """(answers/s, event-loop CPU us per answer) under 64 closed-loop clients, after 1 s warm."""
    from surge.engine.route import VariantRoute, request_route

    done = 0
    end = time.perf_counter() + 1.0 + seconds

    async def client() -> None:
        nonlocal done
        request_route.set(VariantRoute(variant=pin) if pin else None)
        while time.perf_counter() < end:
            await engine.infer(model, None, inputs)
            done += 1

    clients = [asyncio.create_task(client()) for _ in range(64)]
    await asyncio.sleep(1.0)
    count, cpu, wall = done, time.thread_time(), time.perf_counter()
    await asyncio.sleep(seconds - 0.05)
    count, cpu, wall = done - count, time.thread_time() - cpu, time.perf_counter() - wall
    await asyncio.gather(*clients)
    return count / wall, cpu / count * 1e6


async def refused(engine: Any, model: str, inputs: Any) -> float:
    """Event-loop CPU us per request refused at admission (its deadline cannot be met)."""
    from surge.errors import DeadlineExceededError, QueueFullError

    cpu = time.thread_time()
    for _ in range(REFUSALS):
        try:
            await engine.infer(model, None, inputs, timeout_us=1)
        except (QueueFullError, DeadlineExceededError):
            continue
        raise RuntimeError(f"{model}: a request with a 1-us deadline was answered")
    return (time.thread_time() - cpu) / REFUSALS * 1e6


async def leg(repo: Path, inputs: Any, name: str, seconds: float) -> dict[str, float]:
    from surge.engine import Engine
    from surge.repository import Repository

    model = "plain" if name == "plain" else "adaptive"
    engine = Engine(Repository(repo), models=[model])
    await engine.start()
    try:
        pin = "int8-static" if name == "pinned" else None
        rate, cpu_us = await answered(engine, model, inputs, pin, seconds)
        refusal_us = await refused(engine, model, inputs)
    finally:
        await engine.stop(grace_s=10)
    return {"answers_per_s": round(rate), "loop_us_per_answer": round(cpu_us, 2),
            "loop_us_per_refusal": round(refusal_us, 2)}


def measure(seconds: float) -> dict[str, dict[str, float]]:
    """Every leg once, in this process, on this process's `surge`."""
    with tempfile.TemporaryDirectory() as tmp:
        repo, inputs = repository(Path(tmp))
        return {name: asyncio.run(leg(repo, inputs, name, seconds)) for name in LEGS}


def child(src: str, seconds: float) -> dict[str, dict[str, float]]:
    """One measurement in a fresh process importing `surge` from `src`."""
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, __file__, "--child", "--seconds", str(seconds)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def medians(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {name: {key: round(statistics.median(r[name][key] for r in runs), 2)
                   for key in runs[0][name]}
            for name in LEGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds a leg")
    parser.add_argument("--rounds", type=int, default=2, help="processes per source tree")
    parser.add_argument("--src", help="another source tree to compare (its `src` folder)")
    parser.add_argument("--out", default="ladder_path.json", help="under benchmarks/results/")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seconds <= 1 or args.rounds < 1:
        parser.error(f"need --seconds > 1 and --rounds >= 1, got {args.seconds} and {args.rounds}")
    if args.child:
        print(json.dumps(measure(args.seconds)))
        return
    trees = {"this": str(ROOT / "src")} | ({"other": args.src} if args.src else {})
    runs: dict[str, list[dict[str, dict[str, float]]]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree, src in trees.items():
            runs[tree].append(child(src, args.seconds))
    result = {"trees": trees, "rounds": args.rounds, "seconds": args.seconds, "runs": runs,
              "medians": {tree: medians(r) for tree, r in runs.items()}}
    for tree, table in result["medians"].items():
        print(f"{tree} ({trees[tree]})")
        for name, row in table.items():
            print(f"  {name:7s} {row['answers_per_s']:8.0f} answers/s  "
                  f"{row['loop_us_per_answer']:6.2f} us/answer  "
                  f"{row['loop_us_per_refusal']:6.2f} us/refusal")
    path = ROOT / "benchmarks" / "results" / args.out
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()

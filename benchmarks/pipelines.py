"""Pipelines: what decoding image bytes in the server costs, side by side in one run.

1. Decoders: simplejpeg (libjpeg-turbo, DCT-domain scaling) against Pillow, decode + resize to
   the model's input, per image, on one thread: a 451x300 photo, a 512x512 photo, a 4000x3000
   photo (JPEG quality 90) and the detector's 128x128 PNG canvas.
2. Processor threads: the same JPEG decodes on 1 thread and on one thread per core (wall time):
   the decoders release the GIL, so the threads scale instead of queueing on it.
3. Overhead at 64 clients: the Engine in process serving `detector` fed decoded UINT8 canvases
   and `detector-boxes` (PNG bytes -> decode -> detector -> thresholded, labelled boxes), one
   canvas per request, closed loop. Per request: front-end CPU (this process: event loop,
   clients, processor threads), worker CPU (the detector's worker processes), p99. The extra CPU
   of the pipeline is compared with the decode cost itself (target: at most 10% above it).
   A third leg, `detector-boxes` with its box step handed to a processor thread as before it
   was declared inline, measures what running cheap steps on the event loop saves; a fourth,
   with every decode handed to a processor thread as before small images were decoded on the
   loop, what that saves; a fifth does the pipeline's work by hand (decode, detector, boxes on
   the loop, no pipeline) under the same load: the pipeline's own cost is the difference, and
   what the steps cost under load is set apart from what they cost alone. The legs run in
   turn `--rounds` times (load from other processes drifts); each figure is the mean over them.
4. Hand-off: the box step alone on one request's outputs (1 x 32 boxes), awaited on an event
   loop one call after another, inline and through the processor threads: process CPU per call.

    .venv/bin/python benchmarks/pipelines.py --duration 10 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from surge.engine import Engine
from surge.platform import available_cores
from surge.processors import declares
from surge.processors.detection import boxes, describe_boxes
from surge.processors.images import decode, describe_decode
from surge.repository import Repository

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = ROOT / "examples" / "repository"
IMAGENET = {"size": [224, 224], "crop_fraction": 0.875, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}
CANVAS = {"size": [128, 128], "color": "gray", "layout": "hw", "dtype": "uint8"}


@declares(describe_boxes)  # the same step, not declared inline: it runs in a processor thread
def boxes_in_thread(inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict[str, np.ndarray]:
    return boxes(inputs, params)


@declares(describe_decode)  # the same decode, without inline_when: always in a processor thread
def decode_in_thread(inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict[str, np.ndarray]:
    return decode(inputs, params)


def _threaded_copy(repo: Path, processor: str, replacement: str) -> str:
    """A copy of detector-boxes with one processor step replaced (one run in a thread)."""
    import yaml

    config = yaml.safe_load((repo / "detector-boxes" / "config.yaml").read_text())
    for step in config["steps"]:
        if step.get("processor") == processor:
            step["processor"] = f"__main__:{replacement}"  # this script, run in process
    name = f"detector-boxes-{replacement.replace('_', '-')}"
    (repo / name).mkdir()
    (repo / name / "config.yaml").write_text(yaml.safe_dump(config))
    return name


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _canvases(count: int) -> np.ndarray:
    from surge_examples.detection.dataset import generate_split

    return generate_split("test", count, seed=11).images


def _inputs() -> dict[str, tuple[bytes, dict[str, Any]]]:
    import skimage.data

    astronaut = skimage.data.astronaut()
    large = np.asarray(Image.fromarray(astronaut).resize((4000, 3000), Image.Resampling.BICUBIC))
    return {
        "JPEG 451x300 -> 224": (simplejpeg.encode_jpeg(skimage.data.chelsea(), 90), IMAGENET),
        "JPEG 512x512 -> 224": (simplejpeg.encode_jpeg(astronaut, 90), IMAGENET),
        "JPEG 4000x3000 -> 224": (simplejpeg.encode_jpeg(np.ascontiguousarray(large), 90), IMAGENET),
        "PNG 128x128 gray": (_png(_canvases(1)[0]), CANVAS),
    }


def _cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    started = time.thread_time()
    for _ in range(repeats):
        fn()
    return (time.thread_time() - started) / repeats * 1e3


def decoders(repeats: int) -> dict[str, dict[str, float]]:
    rows = {}
    for name, (data, params) in _inputs().items():
        batch = {"image": np.array([data], dtype=object)}
        rows[name] = {decoder: _cpu_ms(lambda b=batch, p={**params, "decoder": decoder}:
                                       decode(b, p), repeats)
                      for decoder in ("simplejpeg", "pillow")}
        print(f"{name:<24} simplejpeg {rows[name]['simplejpeg']:7.2f} ms   "
              f"pillow {rows[name]['pillow']:7.2f} ms")
    return rows


def thread_scaling(count: int) -> dict[str, float]:
    data, params = _inputs()["JPEG 512x512 -> 224"]
    batch = {"image": np.array([data], dtype=object)}
    threads = max(2, available_cores())
    walls = {}
    for workers in (1, threads):
        with ThreadPoolExecutor(workers) as pool:
            started = time.perf_counter()
            list(pool.map(lambda _: decode(batch, params), range(count)))
            walls[workers] = time.perf_counter() - started
    result = {"threads": threads, "speedup": walls[1] / walls[threads]}
    print(f"{count} decodes: {threads} threads {result['speedup']:.2f}x one thread")
    return result


def _worker_cpu_s() -> float:
    """CPU seconds of this process's children (the worker processes), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


Call = Callable[[dict[str, np.ndarray]], Awaitable[object]]


async def _level(call: Call, payloads: list[dict[str, np.ndarray]],
                 concurrency: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + duration

    async def client(index: int) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await call(payloads[index % len(payloads)])
            latencies.append(time.perf_counter() - started)
            index += concurrency

    await asyncio.gather(*(client(i) for i in range(concurrency)))  # warm-up pass below
    latencies.clear()
    stop = time.perf_counter() + duration
    cpu, workers, wall = time.process_time(), _worker_cpu_s(), time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    cpu, workers = time.process_time() - cpu, _worker_cpu_s() - workers
    wall, count = time.perf_counter() - wall, len(latencies)
    return {"requests_per_s": count / wall, "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            "frontend_cpu_us": cpu / count * 1e6, "worker_cpu_us": workers / count * 1e6}


def _mean(levels: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([level[key] for level in levels])) for key in levels[0]}


def _extra(level: dict[str, float], model: dict[str, float]) -> float:
    return (level["frontend_cpu_us"] + level["worker_cpu_us"]
            - model["frontend_cpu_us"] - model["worker_cpu_us"])


async def _legs(legs: dict[str, tuple[Call, list[dict[str, np.ndarray]]]], concurrency: int,
                duration: float, rounds: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in legs}
    for _ in range(rounds):
        for name, (call, payloads) in legs.items():
            runs[name].append(await _level(call, payloads, concurrency, duration))
    return {name: _mean(levels) for name, levels in runs.items()}


def _served(engine: Engine, model: str) -> Call:
    async def call(inputs: dict[str, np.ndarray]) -> object:
        return await engine.infer(model, None, inputs)
    return call


def _by_hand(engine: Engine) -> Call:
    """The pipeline's work without the pipeline: decode and boxes on the loop, the detector."""
    config = Repository(EXAMPLES).config("detector")
    params = {**config.parameters, "labels": list(config.labels or [])}

    async def call(inputs: dict[str, np.ndarray]) -> object:
        pixels = decode(inputs, CANVAS)["pixels"]
        found = await engine.infer("detector", None, {"image": pixels},
                                   outputs=["boxes", "scores", "labels"])
        return boxes(found, params)
    return call


async def overhead(concurrency: int, duration: float, rounds: int = 1) -> dict[str, Any]:
    canvases = _canvases(64)
    raw = [{"image": canvases[i:i + 1]} for i in range(len(canvases))]
    files = [{"image": np.array([_png(c)], dtype=object)} for c in canvases]
    decode_us = float(np.mean([_cpu_ms(lambda f=f: decode(f, CANVAS), 5) for f in files[:16]])) * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("detector", "detector-boxes"):
            shutil.copytree(EXAMPLES / name, Path(tmp) / name,
                            ignore=shutil.ignore_patterns("tuning"))
        boxes_thread = _threaded_copy(Path(tmp), "detection.boxes", "boxes_in_thread")
        decode_thread = _threaded_copy(Path(tmp), "image.decode", "decode_in_thread")
        engine = Engine(Repository(tmp), models=["detector-boxes", boxes_thread, decode_thread])
        await engine.start()
        try:
            levels = await _legs({
                "detector (decoded canvas)": (_served(engine, "detector"), raw),
                "detector-boxes (PNG bytes)": (_served(engine, "detector-boxes"), files),
                "detector-boxes, box step in a thread": (_served(engine, boxes_thread), files),
                "detector-boxes, decode in a thread": (_served(engine, decode_thread), files),
                "by hand: decode, detector, boxes": (_by_hand(engine), files)},
                concurrency, duration, rounds)
        finally:
            await engine.stop(5.0)
    model, pipeline, boxes_before, decode_before, by_hand = levels.values()
    extra = _extra(pipeline, model)
    for name, level in levels.items():
        print(f"{name:<36} {level['requests_per_s']:6.0f} req/s  p99 {level['p99_ms']:6.1f} ms  "
              f"front end {level['frontend_cpu_us']:6.0f} us  workers {level['worker_cpu_us']:6.0f} us")
    print(f"extra CPU per request {extra:.0f} us ({_extra(boxes_before, model):.0f} us with the "
          f"box step in a thread, {_extra(decode_before, model):.0f} us with the decode in a "
          f"thread); decode alone {decode_us:.0f} us ({extra / decode_us:.2f}x the decode); "
          f"the same steps by hand {_extra(by_hand, model):.0f} us")
    return {"levels": levels, "extra_cpu_us": extra,
            "extra_cpu_us_box_step_in_thread": _extra(boxes_before, model),
            "extra_cpu_us_decode_in_thread": _extra(decode_before, model),
            "extra_cpu_us_by_hand": _extra(by_hand, model),
            "decode_us": decode_us, "extra_over_decode": extra / decode_us,
            "concurrency": concurrency, "rounds": rounds, "load_average": os.getloadavg()}


def handoff(count: int) -> dict[str, float]:
    from surge.pipeline.steps import processor_step
    from surge.repository.config import ModelConfig, StepConfig

    rng = np.random.default_rng(0)
    inputs = {"boxes": rng.random((1, 32, 4), dtype=np.float32) * 128,
              "scores": rng.random((1, 32), dtype=np.float32),
              "labels": rng.integers(0, 10, (1, 32))}
    result = {}
    for name, processor in (("inline", "detection.boxes"),
                            ("processor thread", "__main__:boxes_in_thread")):
        config = StepConfig(name="keep", processor=processor, params={"score_threshold": 0.375},
                            inputs={k: k for k in inputs}, outputs={"count": "count"})
        step = processor_step("bench", config, ModelConfig(name="bench"))

        async def calls(step: Any = step) -> float:
            await step.run(inputs, 1)
            started = time.process_time()
            for _ in range(count):
                await step.run(inputs, 1)
            return (time.process_time() - started) / count * 1e6

        result[name] = asyncio.run(calls())
    print(f"box step per call: inline {result['inline']:.0f} us, through a processor thread "
          f"{result['processor thread']:.0f} us (process CPU)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="turns of the overhead legs")
    parser.add_argument("--json", type=Path, default=RESULTS / "pipelines.json")
    args = parser.parse_args()
    result = {"decoders_ms": decoders(args.repeats), "threads": thread_scaling(200),
              "handoff_cpu_us": handoff(2000),
              "overhead": asyncio.run(overhead(args.concurrency, args.duration, args.rounds))}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()

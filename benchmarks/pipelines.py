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
   was declared inline, measures what running cheap steps on the event loop saves.
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
from collections.abc import Callable
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
from surge.processors.images import decode
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


def _threaded_copy(repo: Path) -> str:
    """`detector-boxes-threads`: detector-boxes with its box step in a processor thread."""
    import yaml

    config = yaml.safe_load((repo / "detector-boxes" / "config.yaml").read_text())
    for step in config["steps"]:
        if step.get("processor") == "detection.boxes":
            step["processor"] = "__main__:boxes_in_thread"  # this script, run in process
    (repo / "detector-boxes-threads").mkdir()
    (repo / "detector-boxes-threads" / "config.yaml").write_text(yaml.safe_dump(config))
    return "detector-boxes-threads"


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


async def _level(engine: Engine, model: str, payloads: list[dict[str, np.ndarray]],
                 concurrency: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + duration

    async def client(index: int) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await engine.infer(model, None, payloads[index % len(payloads)])
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


async def overhead(concurrency: int, duration: float) -> dict[str, Any]:
    canvases = _canvases(64)
    raw = [{"image": canvases[i:i + 1]} for i in range(len(canvases))]
    files = [{"image": np.array([_png(c)], dtype=object)} for c in canvases]
    decode_us = float(np.mean([_cpu_ms(lambda f=f: decode(f, CANVAS), 5) for f in files[:16]])) * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("detector", "detector-boxes"):
            shutil.copytree(EXAMPLES / name, Path(tmp) / name,
                            ignore=shutil.ignore_patterns("tuning"))
        threaded = _threaded_copy(Path(tmp))
        engine = Engine(Repository(tmp), models=["detector-boxes", threaded])
        await engine.start()
        try:
            levels = {"detector (decoded canvas)": await _level(engine, "detector", raw,
                                                                 concurrency, duration),
                      "detector-boxes (PNG bytes)": await _level(engine, "detector-boxes", files,
                                                                  concurrency, duration),
                      "detector-boxes, box step in a thread": await _level(
                          engine, threaded, files, concurrency, duration)}
        finally:
            await engine.stop(5.0)
    model, pipeline, before = levels.values()
    extra = (pipeline["frontend_cpu_us"] + pipeline["worker_cpu_us"]
             - model["frontend_cpu_us"] - model["worker_cpu_us"])
    for name, level in levels.items():
        print(f"{name:<28} {level['requests_per_s']:8.0f} req/s  p99 {level['p99_ms']:6.1f} ms  "
              f"front end {level['frontend_cpu_us']:6.0f} us  workers {level['worker_cpu_us']:6.0f} us")
    threaded_extra = (before["frontend_cpu_us"] + before["worker_cpu_us"]
                      - model["frontend_cpu_us"] - model["worker_cpu_us"])
    print(f"extra CPU per request {extra:.0f} us ({threaded_extra:.0f} us with the box step in "
          f"a thread); decode alone {decode_us:.0f} us ({extra / decode_us:.2f}x the decode)")
    return {"levels": levels, "extra_cpu_us": extra, "extra_cpu_us_box_step_in_thread":
            threaded_extra, "decode_us": decode_us, "extra_over_decode": extra / decode_us,
            "concurrency": concurrency, "load_average": os.getloadavg()}


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
    parser.add_argument("--json", type=Path, default=RESULTS / "pipelines.json")
    args = parser.parse_args()
    result = {"decoders_ms": decoders(args.repeats), "threads": thread_scaling(200),
              "handoff_cpu_us": handoff(2000),
              "overhead": asyncio.run(overhead(args.concurrency, args.duration))}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()

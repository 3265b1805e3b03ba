"""Pipelines: what decoding image bytes in the server costs, side by side in one run.

1. Decoders: simplejpeg (libjpeg-turbo, DCT-domain scaling) against Pillow, decode + resize to
   the model's input, per image, on one thread: a 451x300 photo, a 512x512 photo, a 4000x3000
   photo (JPEG quality 90) and the detector's 128x128 PNG canvas.
2. Processor threads: the same JPEG decodes on 1 thread and on one thread per core (wall time):
   the decoders release the GIL, so the threads scale instead of queueing on it.
3. Overhead at 64 clients: the Engine in process serving `detector` fed decoded UINT8 canvases,
   `detector-decode` (PNG bytes -> decode -> detector, its raw outputs: the target's
   comparison, "decode + model vs the model fed decoded tensors") and `detector-boxes` (PNG
   bytes -> decode -> detector -> thresholded, labelled boxes), one canvas per request, closed
   loop. Per request: front-end CPU (this process: event loop, clients, processor threads), the
   workers' CPU (each detector batch's thread CPU as its worker reports it, and the worker
   processes' whole CPU; the workers' share of a leg's extra is its extra batches priced at the
   model leg's CPU per batch: see `_extra`), p99, and the thread CPU of the decode and box
   steps as the server itself measured them in the same window (the pipeline's `steps`
   statistics: what the steps cost in situ, under this load, where the shared cores make them
   dearer than alone). The extra CPU of `detector-decode` is compared with the decode cost
   itself (target: at most 10% above it; `target` in the JSON), and that of `detector-boxes`
   with decode + boxes in situ.
   A fourth leg, `detector-boxes` with its box step handed to a processor thread as before it
   was declared inline, measures what running cheap steps on the event loop saves; a fifth,
   with every decode handed to a processor thread as before small images were decoded on the
   loop, what that saves; a sixth does the pipeline's work by hand (decode, detector, boxes on
   the loop, no pipeline) under the same load: the pipeline's own cost is the difference, and
   what the steps cost under load is set apart from what they cost alone (this leg times its own
   decode and boxes the same way), and `decode-by-hand` does `detector-decode`'s work by hand
   (decode on the loop, then the detector): the decode as a hand-written server pays it, call
   and all, so the decode leg's extra above it is the pipeline's own cost under this load
   (`pipeline_own_in_situ_us` in the JSON). `in-worker` serves the detector with a
   `preprocess:` decode (PNG bytes decoded in its own workers) and `pipeline-in-worker` the
   boxes pipeline over that model (no decode step of its own). The legs run in turn `--rounds`
   times (load from other processes drifts); each figure is the mean over them. `--legs` picks
   some (py-spy profiles).
   The pipeline's own Python on its own, without sockets or workers: benchmarks/pipeline_path.py.
   On photos (`--only photos`, also part of the default run): `imagenet-decode` (the `imagenet`
   pipeline without its top-5 step: JPEG bytes -> decode on the processor threads ->
   mobilenetv2, its logits out) against mobilenetv2 fed the same decode's FP32 tensors, and
   the same work by hand (the decode on the same processor threads, then the model), over the
   18 photos scikit-image ships as JPEG quality 90. examples/images/import_weights.py makes
   mobilenetv2's ONNX file first if it is not there. `--model-threads N` serves mobilenetv2 as
   one instance on N threads (1: the decode has the other core of two to itself).
4. Steps alone (`--only steps`): CPU per call of the decode and box steps on one request and of
   a top-5 over 1,000 named classes, on one thread.
5. Hand-off: the box step alone on one request's outputs (1 x 32 boxes), awaited on an event
   loop one call after another, inline and through the processor threads: process CPU per call.

    .venv/bin/python benchmarks/pipelines.py --duration 10 --concurrency 64
    .venv/bin/python benchmarks/pipelines.py --only overhead --legs model,pipeline --rounds 1
    .venv/bin/python benchmarks/pipelines.py --only photos --rounds 3 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
import yaml
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
IMAGES = ROOT / "examples" / "images" / "repository"  # mobilenetv2 and the imagenet pipelines
IMAGENET = {"size": [224, 224], "crop_fraction": 0.875, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}
CANVAS = {"size": [128, 128], "color": "gray", "layout": "hw", "dtype": "uint8"}


@declares(describe_boxes)  # the same step, not declared inline: it runs in a processor thread
def boxes_in_thread(inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict[str, np.ndarray]:
    return boxes(inputs, params)


@declares(describe_decode)  # the same decode, without inline_when: always in a processor thread
def decode_in_thread(inputs: dict[str, np.ndarray], params: dict[str, Any]) -> dict[str, np.ndarray]:
    return decode(inputs, params)


def _add_model(repo: Path, name: str, config: dict[str, Any]) -> str:
    """`config` as model `name` of `repo` (a pipeline: a config.yaml and nothing else)."""
    (repo / name).mkdir()
    (repo / name / "config.yaml").write_text(yaml.safe_dump(config))
    return name


def _threaded_copy(repo: Path, processor: str, replacement: str) -> str:
    """A copy of detector-boxes with one processor step replaced (one run in a thread)."""
    config = yaml.safe_load((repo / "detector-boxes" / "config.yaml").read_text())
    for step in config["steps"]:
        if step.get("processor") == processor:
            step["processor"] = f"__main__:{replacement}"  # this script, run in process
    return _add_model(repo, f"detector-boxes-{replacement.replace('_', '-')}", config)


def _with_preprocess(source: Path, repo: Path, name: str, params: dict[str, Any]) -> str:
    """A copy of the model at `source` (same files, variant and instances) named `name`,
    taking image files: a `preprocess:` step decodes them in its own workers, batch by batch."""
    shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("tuning"))
    path = repo / name / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(name=name, preprocess=[{
        "name": "decode", "processor": "image.decode", "inputs": {"image": "image"},
        "outputs": {"pixels": "image"}, "params": params}])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def _decode_only_copy(repo: Path) -> str:
    """detector-boxes without its box step: PNG bytes -> decode -> detector, the detector's own
    outputs out. Against the detector fed decoded canvases this is the issue's comparison
    ("decode + model vs the model fed decoded tensors"): the only step it adds is the decode."""
    config = yaml.safe_load((repo / "detector-boxes" / "config.yaml").read_text())
    config["steps"] = [step for step in config["steps"] if step["name"] != "keep"]
    detect = next(step for step in config["steps"] if step.get("model") == "detector")
    detect["outputs"] = {"boxes": "boxes", "scores": "scores", "labels": "labels"}
    config["outputs"] = [{"name": "boxes", "datatype": "FP32", "shape": [-1, 32, 4]},
                         {"name": "scores", "datatype": "FP32", "shape": [-1, 32]},
                         {"name": "labels", "datatype": "INT64", "shape": [-1, 32]}]
    return _add_model(repo, "detector-decode", config)


def _bytes_boxes_copy(repo: Path, in_worker: str) -> str:
    """detector-boxes without its decode step, its model step the detector that decodes PNGs in
    its own workers (`in_worker`): the files go to the workers, the boxes step stays."""
    config = yaml.safe_load((repo / "detector-boxes" / "config.yaml").read_text())
    config["steps"] = [step for step in config["steps"] if step["name"] != "decode"]
    detect = next(step for step in config["steps"] if step.get("model") == "detector")
    detect.update(model=in_worker, inputs={"image": "image"})
    return _add_model(repo, "detector-bytes-boxes", config)


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


def steps_alone(repeats: int) -> dict[str, float]:
    """CPU us per call of the steps on one request, alone on one thread: the detector's decode
    and box steps, and a top-5 over 1,000 named classes (the `imagenet` pipelines' last step)."""
    from surge.processors.classification import topk

    rng = np.random.default_rng(0)
    found = {"boxes": rng.random((1, 32, 4), dtype=np.float32) * 128,
             "scores": rng.random((1, 32), dtype=np.float32),
             "labels": rng.integers(0, 10, (1, 32))}
    config = Repository(EXAMPLES).config("detector")
    box_params = {**config.parameters, "labels": list(config.labels or [])}
    logits = {"logits": rng.random((1, 1000), dtype=np.float32)}
    top5 = {"k": 5, "labels": [f"class {i}" for i in range(1000)]}
    canvas = {"image": np.array([_png(_canvases(1)[0])], dtype=object)}
    result = {"decode PNG 128x128": _cpu_ms(lambda: decode(canvas, CANVAS), repeats) * 1e3,
              "boxes 1x32": _cpu_ms(lambda: boxes(found, box_params), repeats) * 1e3,
              "top-5 of 1000": _cpu_ms(lambda: topk(logits, top5), repeats) * 1e3}
    print("steps alone, CPU per call: " + ", ".join(f"{k} {v:.1f} us" for k, v in result.items()))
    return result


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
Probe = Callable[[], dict[str, int]]  # running thread CPU ns by step name


@dataclass(frozen=True)
class Leg:
    """One overhead leg: what its clients call, with what, and where its steps' CPU is read."""

    title: str
    call: Call
    payloads: list[dict[str, np.ndarray]]
    probe: Probe = dict
    # (items, batches, worker ns) the model (the detector or mobilenetv2) has computed: its
    # mean batch explains most of the worker CPU per request (a batch's fixed cost is shared by
    # fewer requests in a smaller batch); the ns are the CPU of the worker threads' batches, as
    # the workers report them
    batches: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
    decode_in_workers: bool = False  # the decode is part of the workers' batches


LEGS = ("model", "decode", "in-worker", "decode-by-hand", "pipeline", "pipeline-in-worker",
        "boxes-thread", "decode-thread", "by-hand")
STEPS = ("decode", "keep")  # detector-boxes' processor steps (the by-hand leg names its own so)


async def _level(leg: Leg, concurrency: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + duration

    async def client(index: int) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await leg.call(leg.payloads[index % len(leg.payloads)])
            latencies.append(time.perf_counter() - started)
            index += concurrency

    await asyncio.gather(*(client(i) for i in range(concurrency)))  # warm-up pass below
    latencies.clear()
    stop = time.perf_counter() + duration
    steps, batches = leg.probe(), leg.batches()
    cpu, workers, wall = time.process_time(), _worker_cpu_s(), time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    cpu, workers = time.process_time() - cpu, _worker_cpu_s() - workers
    wall, count = time.perf_counter() - wall, len(latencies)
    items, batched, batch_ns = (now - then for now, then in zip(leg.batches(), batches,
                                                                 strict=True))
    in_situ = {f"{step}_cpu_us": (ns - steps.get(step, 0)) / count / 1e3
               for step, ns in leg.probe().items()}
    return {"requests_per_s": count / wall, "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            "frontend_cpu_us": cpu / count * 1e6, "worker_cpu_us": workers / count * 1e6,
            "worker_batch_cpu_us": batch_ns / count / 1e3,
            "batches_per_request": batched / count,
            "worker_cpu_per_batch_us": batch_ns / batched / 1e3 if batched else float("nan"),
            "model_batch": items / batched if batched else float("nan"),
            "decode_in_workers": float(leg.decode_in_workers), **in_situ}


def _mean(levels: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([level[key] for level in levels])) for key in levels[0]}


async def _legs(legs: dict[str, Leg], concurrency: int, duration: float,
                rounds: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in legs}
    for _ in range(rounds):
        for name, leg in legs.items():
            runs[name].append(await _level(leg, concurrency, duration))
    return {name: _mean(levels) for name, levels in runs.items()}


def _served(engine: Engine, model: str) -> Call:
    async def call(inputs: dict[str, np.ndarray]) -> object:
        return await engine.infer(model, None, inputs)
    return call


def _steps_cpu(engine: Engine, pipeline: str) -> Probe:
    """The pipeline's processor steps' CPU, as the server measures it (its `steps` statistics)."""
    def probe() -> dict[str, int]:
        steps = getattr(engine.stats(pipeline), "steps", {})
        return {step: cpu["cpu_ns"] for step, cpu in steps.items()}
    return probe


def _by_hand(engine: Engine, with_boxes: bool = True) -> tuple[Call, Probe]:
    """The pipeline's work without the pipeline: decode (and boxes) on the loop, the detector;
    each step's thread CPU timed the way the server times its steps. Without boxes it is
    `detector-decode` by hand: its extra over the model leg is the decode as a hand-written
    server would pay it, and the decode leg's extra above that is the pipeline's own."""
    config = Repository(EXAMPLES).config("detector")
    params = {**config.parameters, "labels": list(config.labels or [])}
    totals = dict.fromkeys(STEPS if with_boxes else STEPS[:1], 0)

    async def call(inputs: dict[str, np.ndarray]) -> object:
        started = time.thread_time_ns()
        pixels = decode(inputs, CANVAS)["pixels"]
        totals["decode"] += time.thread_time_ns() - started
        found = await engine.infer("detector", None, {"image": pixels},
                                   outputs=["boxes", "scores", "labels"])
        if not with_boxes:
            return found
        started = time.thread_time_ns()
        kept = boxes(found, params)
        totals["keep"] += time.thread_time_ns() - started
        return kept
    return call, lambda: dict(totals)


def _preprocess_cpu(engine: Engine, model: str) -> Probe:
    """A model's preprocess steps' CPU in its workers, as the workers report it."""
    return lambda: {"decode": engine.stats(model).preprocess_cpu[1]}


def _model_batches(engine: Engine, model: str) -> Callable[[], tuple[int, int, int]]:
    def batches() -> tuple[int, int, int]:
        stats = engine.stats(model)
        return stats.inference_count, stats.execution_count, stats.compute_cpu[1]
    return batches


def _both_cpu(steps: Probe, preprocess: Probe) -> Probe:
    return lambda: {**steps(), **preprocess()}


def _make_legs(engine: Engine, raw: list[dict[str, np.ndarray]],
               files: list[dict[str, np.ndarray]], boxes_thread: str,
               decode_thread: str, decode_only: str, in_worker: str) -> dict[str, Leg]:
    by_hand, by_hand_cpu = _by_hand(engine)
    decode_by_hand, decode_by_hand_cpu = _by_hand(engine, with_boxes=False)
    batches = _model_batches(engine, "detector")
    return {
        "model": Leg("detector (decoded canvas)", _served(engine, "detector"), raw, dict,
                     batches),
        "decode": Leg("detector-decode (PNG bytes, raw out)", _served(engine, decode_only),
                      files, _steps_cpu(engine, decode_only), batches),
        "in-worker": Leg("detector-bytes (PNG decoded in workers)", _served(engine, in_worker),
                         files, _preprocess_cpu(engine, in_worker),
                         _model_batches(engine, in_worker), decode_in_workers=True),
        "pipeline": Leg("detector-boxes (PNG bytes)", _served(engine, "detector-boxes"), files,
                        _steps_cpu(engine, "detector-boxes"), batches),
        "pipeline-in-worker": Leg(
            "detector-bytes-boxes (PNG decoded in workers)",
            _served(engine, "detector-bytes-boxes"), files,
            _both_cpu(_steps_cpu(engine, "detector-bytes-boxes"),
                      _preprocess_cpu(engine, in_worker)),
            _model_batches(engine, in_worker), decode_in_workers=True),
        "boxes-thread": Leg("detector-boxes, box step in a thread",
                            _served(engine, boxes_thread), files,
                            _steps_cpu(engine, boxes_thread), batches),
        "decode-thread": Leg("detector-boxes, decode in a thread",
                             _served(engine, decode_thread), files,
                             _steps_cpu(engine, decode_thread), batches),
        "by-hand": Leg("by hand: decode, detector, boxes", by_hand, files, by_hand_cpu,
                       batches),
        "decode-by-hand": Leg("by hand: decode, detector", decode_by_hand, files,
                              decode_by_hand_cpu, batches)}


def _extra(level: dict[str, float], model: dict[str, float]) -> dict[str, float]:
    """A leg's CPU per request above the model fed decoded canvases, against its steps in situ.

    Both legs feed the detector the same canvases, so their workers compute the same batches
    but for the batches' sizes. The workers' share of the extra is therefore priced: the extra
    batches per request the leg made, at the model leg's CPU per batch (a whole batch's price,
    so an upper bound). What the workers' threads measured per batch (`workers_measured_us`)
    and the worker processes' whole CPU (`workers_process_us`) are kept beside it: both swing
    by 100-150 us per request between legs whose batches are identical, as load from other
    processes makes the same compute dearer or cheaper, and so prove nothing either way."""
    frontend = level["frontend_cpu_us"] - model["frontend_cpu_us"]
    decode_us, keep_us = level.get("decode_cpu_us", 0.0), level.get("keep_cpu_us", 0.0)
    # A leg that decodes in the workers (`in-worker`) adds its decode, measured there, to the
    # priced batches: the same engine work as the model leg's, plus the decode.
    workers = (level["batches_per_request"] - model["batches_per_request"]) * model[
        "worker_cpu_per_batch_us"] + decode_us * level.get("decode_in_workers", 0.0)
    measured = level["worker_batch_cpu_us"] - model["worker_batch_cpu_us"]
    process = level["worker_cpu_us"] - model["worker_cpu_us"]
    extra = frontend + workers
    steps = decode_us + keep_us

    def over(value: float, base: float) -> float:
        return value / base if base else float("nan")

    return {"extra_us": extra, "frontend_us": frontend, "workers_us": workers,
            "workers_measured_us": measured, "workers_process_us": process,
            "extra_measured_us": frontend + measured, "extra_process_us": frontend + process,
            "decode_in_situ_us": decode_us, "boxes_in_situ_us": keep_us,
            "rest_us": extra - steps,  # what the pipeline (or the hand-written path) adds
            "frontend_over_steps": over(frontend, steps),
            "over_decode": over(extra, decode_us),
            "over_decode_measured": over(frontend + measured, decode_us),
            "over_decode_process": over(frontend + process, decode_us),
            "over_decode_and_boxes": over(extra, steps),
            "target_decode_met": extra <= 1.1 * decode_us,
            "target_decode_and_boxes_met": extra <= 1.1 * steps}


def _print_overhead(levels: dict[str, dict[str, float]], titles: dict[str, str],
                    extras: dict[str, dict[str, float]], decode_us: float) -> None:
    for name, level in levels.items():
        steps = "  ".join(f"{step} {level[f'{step}_cpu_us']:4.0f} us" for step in STEPS
                          if f"{step}_cpu_us" in level)
        print(f"{titles[name]:<36} {level['requests_per_s']:6.0f} req/s  p99 "
              f"{level['p99_ms']:6.1f} ms  front end {level['frontend_cpu_us']:6.0f} us  "
              f"workers {level['worker_batch_cpu_us']:5.0f} us in batches "
              f"({level['worker_cpu_us']:5.0f} process)  batch {level['model_batch']:.2f}  "
              f"{steps}")
    for name, extra in extras.items():
        print(f"{titles[name]:<36} extra {extra['extra_us']:5.0f} us (front end "
              f"{extra['frontend_us']:.0f}, workers' extra batches {extra['workers_us']:.0f}; "
              f"as measured: batches {extra['workers_measured_us']:.0f}, processes "
              f"{extra['workers_process_us']:.0f}); in situ decode "
              f"{extra['decode_in_situ_us']:.0f} + boxes {extra['boxes_in_situ_us']:.0f} us; "
              f"rest {extra['rest_us']:.0f} us; {extra['over_decode']:.2f}x decode "
              f"({extra['over_decode_measured']:.2f}x, {extra['over_decode_process']:.2f}x as "
              "measured), "
              f"{extra['over_decode_and_boxes']:.2f}x decode + boxes; front end "
              f"{extra['frontend_over_steps']:.2f}x its steps")
    print(f"decode alone, idle thread: {decode_us:.0f} us")


async def overhead(concurrency: int, duration: float, rounds: int = 1,
                   legs: tuple[str, ...] = LEGS) -> dict[str, Any]:
    canvases = _canvases(64)
    raw = [{"image": canvases[i:i + 1]} for i in range(len(canvases))]
    files = [{"image": np.array([_png(c)], dtype=object)} for c in canvases]
    # Alone, for reference: 100 calls a file (5 read ~40% higher: caches still cold).
    decode_us = float(np.mean([_cpu_ms(lambda f=f: decode(f, CANVAS), 100)
                               for f in files[:16]])) * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("detector", "detector-boxes"):
            shutil.copytree(EXAMPLES / name, Path(tmp) / name,
                            ignore=shutil.ignore_patterns("tuning"))
        boxes_thread = _threaded_copy(Path(tmp), "detection.boxes", "boxes_in_thread")
        decode_thread = _threaded_copy(Path(tmp), "image.decode", "decode_in_thread")
        decode_only = _decode_only_copy(Path(tmp))
        in_worker = _with_preprocess(EXAMPLES / "detector", Path(tmp), "detector-bytes", CANVAS)
        bytes_boxes = _bytes_boxes_copy(Path(tmp), in_worker)
        engine = Engine(Repository(tmp), models=["detector-boxes", boxes_thread, decode_thread,
                                                 decode_only, in_worker, bytes_boxes])
        await engine.start()
        try:
            chosen = {name: leg for name, leg in _make_legs(
                engine, raw, files, boxes_thread, decode_thread, decode_only, in_worker).items()
                if name in legs}
            levels = await _legs(chosen, concurrency, duration, rounds)
        finally:
            await engine.stop(5.0)
    return _report(levels, chosen, decode_us, concurrency=concurrency, rounds=rounds,
                   duration_s=duration)


def _report(levels: dict[str, dict[str, float]], legs: dict[str, Leg], decode_us: float,
            **run: Any) -> dict[str, Any]:
    """Each leg's extra over the `model` leg, printed, and the pipeline's own cost under load:
    the `decode` leg's extra above the same work by hand (`decode-by-hand`)."""
    extras = {name: _extra(level, levels["model"])
              for name, level in levels.items() if name != "model" and "model" in levels}
    _print_overhead(levels, {name: leg.title for name, leg in legs.items()}, extras, decode_us)
    own = (extras["decode"]["extra_us"] - extras["decode-by-hand"]["extra_us"]
           if "decode" in extras and "decode-by-hand" in extras else None)
    if own is not None:
        print(f"the pipeline's own cost under this load: {own:.0f} us per request (the decode "
              "leg's extra above the same work by hand)")
    return {"levels": levels, "extra": extras, "target": extras.get("decode"),
            "pipeline_own_in_situ_us": own, "decode_alone_us": decode_us, **run,
            "load_average": os.getloadavg()}


def _imagenet_decode_copy(repo: Path) -> str:
    """`imagenet` without its top-5 step: JPEG bytes -> decode -> mobilenetv2, its logits out.
    Against mobilenetv2 fed the decoded tensors the only step it adds is the decode."""
    config = yaml.safe_load((IMAGES / "imagenet" / "config.yaml").read_text())
    config["steps"] = [step for step in config["steps"] if step["name"] != "top5"]
    config["outputs"] = [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
    return _add_model(repo, "imagenet-decode", config)


def _photo_files() -> list[dict[str, np.ndarray]]:
    """The photos scikit-image ships (18, 300x451 to 1,000x872 pixels) as JPEG quality 90."""
    from surge_examples.images.photos import jpeg, photos

    return [{"image": np.array([jpeg(rgb, 90)], dtype=object)} for rgb in photos().values()]


def _photo_by_hand(engine: Engine, params: dict[str, Any]) -> tuple[Call, Probe]:
    """`imagenet-decode` by hand: the decode where the pipeline runs it (the processor threads
    for a photo, the loop for a small image), then mobilenetv2; the decode's thread CPU timed
    the way the server times its steps."""
    from surge.pipeline.steps import processor_pool
    from surge.processors.images import small_images

    totals = {"decode": 0}
    lock = threading.Lock()

    def timed(inputs: dict[str, np.ndarray]) -> np.ndarray:
        started = time.thread_time_ns()
        pixels = decode(inputs, params)["pixels"]
        with lock:
            totals["decode"] += time.thread_time_ns() - started
        return pixels

    async def call(inputs: dict[str, np.ndarray]) -> object:
        if small_images(inputs, params):
            pixels = timed(inputs)
        else:
            pixels = await asyncio.get_running_loop().run_in_executor(processor_pool(), timed,
                                                                      inputs)
        return await engine.infer("mobilenetv2", None, {"image": pixels})
    return call, lambda: dict(totals)


def _one_instance(path: Path, threads: int) -> None:
    config = yaml.safe_load(path.read_text())
    config.update(instances=1, threads=threads)
    path.write_text(yaml.safe_dump(config))


def _mobilenet_onnx() -> None:
    if not (IMAGES / "mobilenetv2" / "1" / "model.onnx").exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "images" / "import_weights.py"),
                        "--model", "mobilenetv2"], check=True)


async def photo_overhead(concurrency: int, duration: float, rounds: int = 1,
                         model_threads: int | None = None) -> dict[str, Any]:
    """The issue's comparison on photos: `imagenet-decode` (JPEG bytes -> decode ->
    mobilenetv2) against mobilenetv2 fed the same decode's tensors, and the same work by hand.
    `model_threads`: mobilenetv2 as one instance on that many threads (its config's layout
    otherwise), e.g. 1 to leave the decode a core of its own on two."""
    _mobilenet_onnx()
    files = _photo_files()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(IMAGES / "mobilenetv2", Path(tmp) / "mobilenetv2",
                        ignore=shutil.ignore_patterns("tuning"))
        if model_threads is not None:
            _one_instance(Path(tmp) / "mobilenetv2" / "config.yaml", model_threads)
        pipeline = _imagenet_decode_copy(Path(tmp))
        repo = Repository(tmp)
        params = next(step.params for step in repo.config(pipeline).steps
                      if step.name == "decode")
        in_worker = _with_preprocess(Path(tmp) / "mobilenetv2", Path(tmp), "mobilenetv2-bytes",
                                     params)
        raw = [{"image": decode(f, params)["pixels"]} for f in files]
        decode_us = float(np.mean([_cpu_ms(lambda f=f: decode(f, params), 20)
                                   for f in files])) * 1e3
        engine = Engine(repo, models=[pipeline, in_worker])
        await engine.start()
        try:
            batches = _model_batches(engine, "mobilenetv2")
            by_hand, by_hand_cpu = _photo_by_hand(engine, params)
            legs = {
                "model": Leg("mobilenetv2 (decoded tensors)", _served(engine, "mobilenetv2"),
                             raw, dict, batches),
                "decode": Leg("imagenet-decode (JPEG bytes)", _served(engine, pipeline), files,
                              _steps_cpu(engine, pipeline), batches),
                "in-worker": Leg("mobilenetv2-bytes (JPEG decoded in workers)",
                                 _served(engine, in_worker), files,
                                 _preprocess_cpu(engine, in_worker),
                                 _model_batches(engine, in_worker), decode_in_workers=True),
                "decode-by-hand": Leg("by hand: decode, mobilenetv2", by_hand, files,
                                      by_hand_cpu, batches)}
            levels = await _legs(legs, concurrency, duration, rounds)
        finally:
            await engine.stop(5.0)
    return _report(levels, legs, decode_us, photos=len(files), model_threads=model_threads,
                   concurrency=concurrency, rounds=rounds, duration_s=duration)


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


def _chosen_legs(parser: argparse.ArgumentParser, text: str) -> tuple[str, ...]:
    legs = tuple(leg for leg in text.split(",") if leg)
    unknown = sorted(set(legs) - set(LEGS))
    if unknown or not legs:
        parser.error(f"--legs: unknown {unknown or text!r}; choose from {', '.join(LEGS)}")
    return legs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="turns of the overhead legs")
    parser.add_argument("--only", choices=("all", "overhead", "photos", "steps"), default="all",
                        help="overhead: skip the decoder, step, thread and hand-off parts; "
                        "photos: the overhead on photos only; steps: the steps alone only")
    parser.add_argument("--legs", default=",".join(LEGS),
                        help=f"overhead legs to run, of {','.join(LEGS)}")
    parser.add_argument("--model-threads", type=int, default=None,
                        help="photos: mobilenetv2 as one instance on this many threads")
    parser.add_argument("--json", type=Path, default=RESULTS / "pipelines.json")
    args = parser.parse_args()
    legs = _chosen_legs(parser, args.legs)
    result: dict[str, Any] = {}
    if args.only in ("all", "steps"):
        result["steps_alone_cpu_us"] = steps_alone(max(args.repeats, 2000))
    if args.only == "all":
        result.update(decoders_ms=decoders(args.repeats), threads=thread_scaling(200),
                      handoff_cpu_us=handoff(2000))
    if args.only in ("all", "overhead"):
        result["overhead"] = asyncio.run(
            overhead(args.concurrency, args.duration, args.rounds, legs))
    if args.only in ("all", "photos"):
        result["photo_overhead"] = asyncio.run(
            photo_overhead(args.concurrency, args.duration, args.rounds, args.model_threads))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()

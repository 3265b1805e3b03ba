"""A load trace against three configurations of each model, side by side in one run.

For each model (`fashion`, the default; `resnet64`, ResNet-18 at 3x64x64) the capacity of the
untuned config is measured first (closed loop, 64 clients), then an open-loop trace with
Poisson arrivals is replayed against each configuration (benchmarks/load_models.py): `--phase`
seconds at half that capacity, at `--surge` times it, and at half again. Every request carries
the SLO as its deadline, counted from its scheduled arrival (as a client with an absolute
deadline sends it: a request the generator sends late has that much less left), so what cannot
be answered in time is refused at admission or expires in the queue. Per 1-s window: p99,
goodput (answers within the SLO per second), shed requests, the variant mix and the mean
accuracy of the answers (each answer carries its variant's measured accuracy). Then one
closed-loop client's p50 on each configuration beside the in-process batch-1 time, and, for
`resnet64`, one closed-loop client over HTTP against Surge (adaptive config) and against the
naive FastAPI server (benchmarks/naive_server.py).

Configurations: `untuned` (committed config), `peak` (the static config `surge tune` picks for
the peak rate over [original, int8-static], about 3 minutes a model; its report is saved beside
the results as `<out>_tune_<model>.json`; `--hand-peak`: int8-static with the untuned batching
instead), `adaptive` (SLO control with the accuracy ladder [original, int8-static], on the
tune's pick's batching and layout as `surge tune --slo-p99` writes them; `--adaptive-layout
untuned` keeps the untuned config's; `--adaptive-placement in-process` serves its instances on
threads of the engine's process instead of worker processes, `shared` in worker processes that
the ladder's rungs share, a worker group; `--configs adaptive` replays the trace against that
one only).

    .venv/bin/python benchmarks/surge_load.py                       # the recorded run: 30 s phases
    .venv/bin/python benchmarks/surge_load.py --phase 5 --models fashion   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from load_models import BUILDERS, CONFIGS, LoadModel, tune_peak

from surge.engine import Engine
from surge.engine.route import VariantRoute, request_route
from surge.errors import DeadlineExceededError, QueueFullError
from surge.repository import Repository
from surge.server.process import freeze_loaded_heap

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLOT = ROOT / "docs" / "img" / "surge_load_trace.png"


@dataclass
class Window:
    second: int
    offered: int
    p99_ms: float | None
    goodput: int  # answers within the SLO in this second
    shed: int  # refused at admission or expired in the queue
    variants: dict[str, int] = field(default_factory=dict)  # answers by variant
    accuracy: float | None = None  # mean accuracy (percent) the answers carry


@dataclass
class Run:
    config: str
    windows: list[Window] = field(default_factory=list)
    half_load_p50_ms: float | None = None
    closed_loop_p50_ms: float = 0.0
    closed_loop_per_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    # Over the trace, from the engine's metrics: shed requests by reason, mean batch rows.
    shed_reasons: dict[str, int] = field(default_factory=dict)
    mean_batch: float | None = None
    gc_pauses_ms: list[float] = field(default_factory=list)  # this process's, over 20 ms
    half_load_sent_late_ms: float | None = None  # p50: see Outcome


# (arrival offset, latency or None, variant, how late the generator sent it): latency counts
# from the scheduled arrival; the event loop's timers fire to the millisecond, so a request
# leaves up to about a millisecond after its arrival time even on an idle machine
Outcome = tuple[float, float | None, str | None, float]


class Outcomes:
    """The trace's outcomes as they come, in arrays the garbage collector does not walk: kept
    as a list of tuples (a million in a default-model trace), each full collection walked them
    all, 15-30 ms inside the windows being measured, in the engine's own process."""

    def __init__(self) -> None:
        self._offset, self._latency, self._late = array("d"), array("d"), array("d")
        self._variant = array("H")  # index into _variants
        self._variants: dict[str | None, int] = {}

    def add(self, offset: float, latency: float | None, variant: str | None, late: float) -> None:
        self._offset.append(offset)
        self._latency.append(math.nan if latency is None else latency)
        self._late.append(late)
        self._variant.append(self._variants.setdefault(variant, len(self._variants)))

    def listed(self) -> list[Outcome]:
        names = {index: name for name, index in self._variants.items()}
        return [(offset, None if math.isnan(latency) else latency, names[index], late)
                for offset, latency, late, index
                in zip(self._offset, self._latency, self._late, self._variant, strict=True)]


async def capacity(engine: Engine, model: str, inputs: dict[str, np.ndarray],
                   seconds: float = 3.0, clients: int = 64) -> float:
    """Requests per second the engine answers under a closed loop of `clients`."""
    done = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await engine.infer(model, None, inputs)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


async def trace(engine: Engine, model: str, inputs: dict[str, np.ndarray],
                rates: list[tuple[float, float]], slo_s: float) -> list[Outcome]:
    """Open-loop Poisson arrivals at each (rate, seconds); each request's deadline is its
    scheduled arrival plus `slo_s`, and its latency counts from that arrival too."""
    outcomes = Outcomes()
    rng = random.Random(0)
    start = time.perf_counter()

    async def one(offset: float) -> None:
        late = time.perf_counter() - start - offset
        route = VariantRoute()
        request_route.set(route)  # this task's own context: the engine names the variant
        try:
            await engine.infer(model, None, inputs, timeout_us=max(1, int((slo_s - late) * 1e6)))
            outcomes.add(offset, time.perf_counter() - start - offset, route.served, late)
        except (QueueFullError, DeadlineExceededError):
            outcomes.add(offset, None, None, late)

    # Only the requests in flight are held: a list of every task of the trace (340,000 on
    # the default model) made each full garbage collection walk them all, stalling the engine
    # that shares this process for 0.3-1 s every few seconds.
    pending: set[asyncio.Task[None]] = set()
    at = 0.0
    for rate, seconds in rates:
        phase_end = at + seconds
        while (at := at + rng.expovariate(rate)) < phase_end:
            delay = at - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(at))
            pending.add(task)
            task.add_done_callback(pending.discard)
        at = phase_end
    await asyncio.gather(*pending)
    return outcomes.listed()


def windows(outcomes: list[Outcome], slo_s: float, accuracy: dict[str, float]) -> list[Window]:
    by_second: dict[int, list[Outcome]] = {}
    for outcome in outcomes:
        by_second.setdefault(int(outcome[0]), []).append(outcome)
    result = []
    for second, group in sorted(by_second.items()):
        answered = sorted(o[1] for o in group if o[1] is not None)
        p99 = answered[min(len(answered) - 1, int(0.99 * len(answered)))] if answered else None
        mix: dict[str, int] = {}
        for o in group:
            if o[2] is not None:
                mix[o[2]] = mix.get(o[2], 0) + 1
        carried = [accuracy[v] for v, n in mix.items() for _ in range(n) if v in accuracy]
        result.append(Window(second, len(group), p99 * 1e3 if p99 is not None else None,
                             sum(1 for x in answered if x <= slo_s),
                             sum(1 for o in group if o[1] is None), mix,
                             statistics.mean(carried) if carried else None))
    return result


def half_load_p50(outcomes: list[Outcome], phase: float) -> float | None:
    """p50 ms of the answers of the first half-load phase, after its first second."""
    first = [o[1] for o in outcomes if 1.0 <= o[0] < phase and o[1] is not None]
    return statistics.median(first) * 1e3 if first else None


def half_load_sent_late(outcomes: list[Outcome], phase: float) -> float | None:
    """p50 ms of how late the generator sent the first half-load phase's requests (the part of
    `half_load_p50` that is the generator's timer, not the server)."""
    first = [o[3] for o in outcomes if 1.0 <= o[0] < phase]
    return statistics.median(first) * 1e3 if first else None


async def closed_loop_one(engine: Engine, model: str, inputs: dict[str, np.ndarray],
                          seconds: float = 3.0) -> tuple[float, float]:
    """p50 ms and requests/s of one closed-loop client."""
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await engine.infer(model, None, inputs)
        latencies.append(time.perf_counter() - t0)
    return statistics.median(latencies) * 1e3, len(latencies) / seconds


def in_process_batch1_ms(path: Path, inputs: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: next(iter(inputs.values()))}
    session.run(None, feed)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def summarise(run: Run, model: LoadModel, phase: float, slo_ms: float, batch1_ms: float) -> None:
    surge = [w for w in run.windows if phase <= w.second < 2 * phase]
    answered = [w for w in run.windows if w.accuracy is not None]
    weights = sum(sum(w.variants.values()) for w in answered)
    run.summary = {
        "surge_goodput_per_s": statistics.mean(w.goodput for w in surge) if surge else 0.0,
        "surge_windows_within_slo": (sum(1 for w in surge if w.p99_ms is not None
                                         and w.p99_ms <= slo_ms) / len(surge)) if surge else 0.0,
        "shed": sum(w.shed for w in run.windows),
        "mean_accuracy": sum(w.accuracy * sum(w.variants.values()) for w in answered  # type: ignore[operator]
                             ) / weights if weights else None,
        "half_load_p50_ms": run.half_load_p50_ms,
        "half_load_p50_target_ms": 1.3 * batch1_ms + 1.0,
        "half_load_sent_late_ms": run.half_load_sent_late_ms,
        # How far accuracy came back after the surge: the share of the last phase's answers
        # (and of its last 10 s) that the top rung gave.
        "after_surge_top_share": top_share(run.windows, 2 * phase, 3 * phase),
        "after_surge_last_10s_top_share": top_share(run.windows, 3 * phase - 10, 3 * phase),
    }


def top_share(windows: list[Window], start: float, end: float, top: str = "original"
              ) -> float | None:
    """The share of the answers of the seconds in [start, end) that `top` gave."""
    counts = [w.variants for w in windows if start <= w.second < end]
    answers = sum(sum(v.values()) for v in counts)
    return sum(v.get(top, 0) for v in counts) / answers if answers else None


def engine_figures(engine: Engine, model: str) -> tuple[dict[str, int], float | None]:
    """Shed requests by reason and the mean batch (rows) the engine's metrics counted."""
    shed: dict[str, int] = {}
    for family in engine.metrics.shed.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("model") == model:
                shed[sample.labels["reason"]] = int(sample.value)
    totals = {sample.name: sample.value for family in engine.metrics.batch_size.collect()
              for sample in family.samples if sample.labels.get("model") == model}
    count = totals.get("surge_batch_size_count", 0.0)
    return shed, (totals.get("surge_batch_size_sum", 0.0) / count if count else None)


class GcPauses:
    """A gc callback keeping the collections of this process (the engine's and the load
    generator's, which share it) that stopped everything for over 20 ms."""

    def __init__(self) -> None:
        self.long_ms: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif (took := time.perf_counter() - self._started) > 0.020:
            self.long_ms.append(round(took * 1e3, 1))


async def measure(model: LoadModel, config: str, rates: list[tuple[float, float]], slo_s: float,
                  phase: float) -> Run:
    engine = Engine(Repository(model.repo), models=[config])
    await engine.start()
    freeze_loaded_heap()  # as `surge serve` does once it has started
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        outcomes = await trace(engine, config, model.inputs, rates, slo_s)
        gc.callbacks.remove(pauses)
        run = Run(config, windows(outcomes, slo_s, model.accuracy),
                  half_load_p50(outcomes, phase), gc_pauses_ms=pauses.long_ms,
                  half_load_sent_late_ms=half_load_sent_late(outcomes, phase))
        run.shed_reasons, run.mean_batch = engine_figures(engine, config)
        run.closed_loop_p50_ms, run.closed_loop_per_s = await closed_loop_one(
            engine, config, model.inputs)
        return run
    finally:
        await engine.stop(grace_s=10.0)


async def untuned_capacity(model: LoadModel) -> float:
    engine = Engine(Repository(model.repo), models=["untuned"])
    await engine.start()
    try:
        cap = await capacity(engine, "untuned", model.inputs)
    finally:
        await engine.stop(grace_s=10.0)
    print(f"{model.name}: capacity (closed loop, 64 clients, untuned): {cap:.0f} requests/s")
    return cap


def peak_by_tune(model: LoadModel, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """`surge tune` picks the peak config; its report goes beside the results."""
    tuned = tune_peak(model, rate, args.slo_ms, adaptive=args.adaptive_layout == "tuned")
    out = RESULTS / args.out  # an absolute --out stays as given
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(f"{out.stem}_tune_{model.name}.json")
    path.write_text(json.dumps(tuned.pop("report"), indent=1))
    tuned["report_file"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    print(f"{model.name}: surge tune picked {tuned['chosen']} for the peak "
          f"({rate:.0f}/s) in {tuned['seconds']:.0f} s; report {path}")
    return tuned


async def run_model(model: LoadModel, args: argparse.Namespace, cap: float) -> dict[str, Any]:
    slo_s = args.slo_ms / 1e3
    rates = [(cap / 2, args.phase), (cap * args.surge, args.phase), (cap / 2, args.phase)]
    runs = [await measure(model, config, rates, slo_s, args.phase) for config in args.configs]
    batch1 = in_process_batch1_ms(model.onnx, model.inputs)
    for run in runs:
        summarise(run, model, args.phase, args.slo_ms, batch1)
    result: dict[str, Any] = {
        "name": model.name, "capacity_per_s": cap, "top": "original",
        "accuracy": model.accuracy, "max_accuracy_drop": model.max_accuracy_drop,
        "in_process_batch1_ms": batch1, "runs": [asdict(r) for r in runs]}
    return result


def versus_naive(model: LoadModel, seconds: float) -> dict[str, Any]:
    """One closed-loop client over HTTP: Surge (adaptive and untuned) vs the naive server."""
    from serving import stop, surge_server, wait_ready

    from surge.bench import run_bench
    from surge.platform import available_cores
    from surge.server.sockets import unused_port

    out: dict[str, Any] = {}
    with surge_server(model.repo, "--models", "adaptive,untuned") as surge:
        for config in ("adaptive", "untuned"):
            run = run_bench(surge.url, config, [1], seconds, "http", warmup_s=1.0).runs[0]
            out[f"surge_{config}"] = {"per_s": run.throughput, "p50_ms": run.p50_ms}
    port = unused_port()
    naive = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "naive_server.py"),
                              model.name, str(model.onnx), str(port), str(available_cores()),
                              "fastapi"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", naive)
        run = run_bench(f"http://127.0.0.1:{port}", model.name, [1], seconds,
                        "http-json", warmup_s=1.0).runs[0]
        out["naive_fastapi"] = {"per_s": run.throughput, "p50_ms": run.p50_ms}
    finally:
        stop(naive)
    out["adaptive_over_naive"] = out["surge_adaptive"]["per_s"] / max(
        out["naive_fastapi"]["per_s"], 1e-9)
    return out


def print_model(result: dict[str, Any], phase: float, slo_ms: float) -> None:
    print(f"\n== {result['name']} (capacity {result['capacity_per_s']:.0f}/s, accuracy "
          f"{result['accuracy']}, budget {result['max_accuracy_drop']} points, peak config "
          f"{result.get('peak', {}).get('chosen')})")
    for run in result["runs"]:
        print(f"\n{run['config']}: second offered p99_ms goodput shed accuracy mix")
        for w in run["windows"]:
            p99 = f"{w['p99_ms']:7.1f}" if w["p99_ms"] is not None else "      -"
            accuracy = f"{w['accuracy']:6.2f}" if w["accuracy"] is not None else "     -"
            mix = " ".join(f"{v}:{n}" for v, n in sorted(w["variants"].items()))
            print(f"  {w['second']:3d} {w['offered']:6d} {p99} {w['goodput']:6d} "
                  f"{w['shed']:5d} {accuracy} {mix}")
        s = run["summary"]
        print(f"  surge goodput {s['surge_goodput_per_s']:.0f}/s, surge windows within "
              f"{slo_ms:g} ms: {s['surge_windows_within_slo']:.0%}, shed {s['shed']}, mean "
              f"accuracy {s['mean_accuracy']}, half-load p50 {s['half_load_p50_ms']} ms "
              f"(target <= {s['half_load_p50_target_ms']:.2f}; sent late by "
              f"{s['half_load_sent_late_ms']} ms); after the surge the original gave "
              f"{s['after_surge_top_share']} of the answers ({s['after_surge_last_10s_top_share']}"
              f" in the last 10 s); 1 client p50 "
              f"{run['closed_loop_p50_ms']:.2f} ms ({run['closed_loop_per_s']:.0f}/s); shed by "
              f"reason {run['shed_reasons']}, mean batch {run['mean_batch']}; gc pauses over "
              f"20 ms: {run['gc_pauses_ms']}")
    goodput = {r["config"]: r["summary"]["surge_goodput_per_s"] for r in result["runs"]}
    if goodput.get("untuned") and goodput.get("peak") and "adaptive" in goodput:
        print(f"  adaptive surge goodput: {goodput['adaptive'] / goodput['untuned']:.2f}x "
              f"untuned, {goodput['adaptive'] / goodput['peak']:.2f}x peak")
    if "one_client_http" in result:
        print(f"  1 client over HTTP: {result['one_client_http']}")


def save(args: argparse.Namespace, models: list[dict[str, Any]], load_before: Any) -> None:
    """The JSON (after each model, so a failure later keeps what was measured) and the plot."""
    from surge.report.trace import plot_trace

    out = {"slo_ms": args.slo_ms, "phase_s": args.phase, "surge": args.surge,
           "load_average": {"before": load_before, "after": os.getloadavg()}, "models": models}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(out, indent=1))
    plot_trace(out, ROOT / args.plot)


def run_all(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    models: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = BUILDERS[name](Path(tmp) / name, args.slo_ms)
            cap = (args.capacity[name] if name in args.capacity
                   else asyncio.run(untuned_capacity(model)))
            peak = ({"chosen": "int8-static (hand-set)"} if args.hand_peak
                    else peak_by_tune(model, cap * args.surge, args))
            place_adaptive(model, args.adaptive_placement)
            result = asyncio.run(run_model(model, args, cap))
            result["peak"] = peak
            result["adaptive_placement"] = args.adaptive_placement
            result["adaptive_layout"] = "untuned" if args.hand_peak else args.adaptive_layout
            if name == "resnet64" and not args.no_naive:  # its own event loops: not in one
                result["one_client_http"] = versus_naive(model, args.closed_s)
            models.append(result)
            save(args, models, load_before)
    for result in models:
        print_model(result, args.phase, args.slo_ms)
    print(f"\nload average before {load_before}, after {os.getloadavg()}")
    print(f"wrote {RESULTS / args.out} and {ROOT / args.plot}")


def place_adaptive(model: LoadModel, placement: str) -> None:
    """The adaptive config with its instances where `placement` says: `shared` keeps them in
    worker processes, but the ladder's rungs share them (a worker group of as many processes
    as the config has instances), so the rungs never compute beside each other."""
    path = model.repo / "adaptive" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    if placement == "shared":
        processes = config.pop("instances", 1)
        config["worker"] = {"group": "adaptive-rungs", "processes": processes}
    else:
        config["placement"] = placement
    path.write_text(yaml.safe_dump(config))


def config_names(text: str) -> list[str]:
    """`untuned,adaptive` -> the configurations to replay, each one of CONFIGS."""
    names = text.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown configuration {unknown[0]!r}: expected some "
                                         f"of {','.join(CONFIGS)}")
    return names


def capacities(text: str) -> dict[str, float]:
    """`fashion=3795,resnet64=548` -> {model: requests/s}."""
    try:
        return {name: float(rate) for name, rate in (p.split("=") for p in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=RATE,... got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", type=float, default=30.0, help="seconds per trace phase")
    parser.add_argument("--surge", type=float, default=3.0, help="surge rate / capacity")
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--models", default="fashion,resnet64")
    parser.add_argument("--closed-s", type=float, default=5.0,
                        help="seconds of the 1-client HTTP comparison")
    parser.add_argument("--no-naive", action="store_true", help="skip the FastAPI comparison")
    parser.add_argument("--capacity", type=capacities, default={},
                        help="NAME=RATE,...: take these capacities (requests/s) instead of "
                             "measuring them, to replay another run's trace")
    parser.add_argument("--hand-peak", action="store_true",
                        help="peak = int8-static with the untuned batching, not tuned")
    parser.add_argument("--adaptive-layout", choices=("tuned", "untuned"), default="tuned",
                        help="the adaptive config's batching and layout: the tune's peak pick "
                             "(as `surge tune --slo-p99` writes it) or the untuned config's")
    parser.add_argument("--adaptive-placement", choices=("local", "in-process", "shared"),
                        default="local",
                        help="the adaptive config's instances: worker processes, threads of "
                             "the engine's process, or worker processes the rungs share")
    parser.add_argument("--configs", type=config_names, default=list(CONFIGS),
                        help=f"which of {','.join(CONFIGS)} to replay the trace against")
    parser.add_argument("--out", default="surge_load.json", help="under benchmarks/results/")
    parser.add_argument("--plot", default=str(PLOT.relative_to(ROOT)))
    run_all(parser.parse_args())


if __name__ == "__main__":
    main()

"""In-process profiler: latency and throughput of one variant per batch size and per
(instances, threads) setting, on the cores this machine has.

Several instances are profiled as several runners driven from Python threads at once: the
engines release the GIL while computing, so this measures how instances share the cores the
way serving workers would, without the serving overhead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from surge.datatypes import v2_to_numpy
from surge.evaluate.metrics import LatencyReport, MetricError, latency_percentiles
from surge.platform import available_cores, settings_grid
from surge.runtimes import Runner, RunnerOptions
from surge.runtimes.base import Signature, example_inputs

RunnerFactory = Callable[[RunnerOptions], Runner]


@dataclass(frozen=True)
class ProfilePoint:
    """One measured setting: per-batch latency and samples/s over all instances."""

    batch_size: int
    instances: int
    threads: int
    latency: LatencyReport
    throughput: float


@dataclass
class ProfileReport:
    """Every measured point of one variant."""

    model: str
    variant: str
    cores: int
    points: list[ProfilePoint] = field(default_factory=list)

    def settings(self) -> list[tuple[int, int]]:
        """The (instances, threads) settings measured."""
        return sorted({(p.instances, p.threads) for p in self.points})

    def batch_sizes(self, instances: int, threads: int) -> list[int]:
        return sorted(p.batch_size for p in self._at(instances, threads))

    def _at(self, instances: int, threads: int) -> list[ProfilePoint]:
        points = [p for p in self.points if (p.instances, p.threads) == (instances, threads)]
        if not points:
            raise MetricError(f"profile of {self.model} has no point at {instances} instance(s) x "
                              f"{threads} thread(s); measured {self.settings()}")
        return points

    def service_ms(self, batch_size: int, instances: int, threads: int) -> float:
        """Mean time one instance takes for a batch, interpolated between measured sizes."""
        points = sorted(self._at(instances, threads), key=lambda p: p.batch_size)
        sizes = [p.batch_size for p in points]
        times = [p.latency.mean_ms for p in points]
        if batch_size > sizes[-1] and len(sizes) > 1:
            # beyond the largest measured batch: extend the last segment's per-sample slope
            slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2])
            return times[-1] + slope * (batch_size - sizes[-1])
        return float(np.interp(batch_size, sizes, times))

    def best_throughput(self) -> float:
        return max((p.throughput for p in self.points), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileReport:
        points = [
            ProfilePoint(p["batch_size"], p["instances"], p["threads"],
                         LatencyReport(**p["latency"]), p["throughput"])
            for p in data.get("points", [])
        ]
        return cls(data["model"], data["variant"], data["cores"], points)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> ProfileReport:
        return cls.from_dict(json.loads(path.read_text()))


def default_settings(cores: int | None = None) -> list[tuple[int, int]]:
    """(instances, threads) pairs with instances x threads <= cores, the pairs worth serving."""
    return settings_grid(cores or available_cores())


def default_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to the model's max batch, and the max itself."""
    limit = max(max_batch_size, 1)
    sizes = [1 << k for k in range(limit.bit_length()) if 1 << k <= limit]
    return sorted(set(sizes) | {limit})


def _time_runner(
    runner: Runner, inputs: dict[str, np.ndarray], stop_at: float, min_runs: int,
    samples: list[float],
) -> None:
    runs = 0
    while runs < min_runs or time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        runner.run(inputs)
        samples.append(time.perf_counter() - t0)
        runs += 1


def batch_inputs(signature: Signature, batch_size: int,
                 samples: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A batch of `batch_size` rows: the first rows of `samples` (repeated when there are
    fewer), cast to the model's dtypes, or random inputs without samples. Real rows matter
    where a dim is variable: random inputs make it 1 (a one-token text), which a model
    computes hundreds of times faster than the texts it will serve."""
    if not samples or set(samples) != set(signature.input_names):
        return example_inputs(signature, batch_size)
    return {spec.name: np.resize(samples[spec.name], (batch_size, *samples[spec.name].shape[1:]))
            .astype(v2_to_numpy(spec.datatype), copy=False) for spec in signature.inputs}


def measure_point(
    runners: Sequence[Runner], batch_size: int, threads: int, duration_s: float = 0.3,
    min_runs: int = 5, samples: dict[str, np.ndarray] | None = None,
) -> ProfilePoint:
    """Drive every runner (one per instance) at once with batches of `batch_size`."""
    inputs = batch_inputs(runners[0].signature, batch_size, samples)
    for runner in runners:  # first runs of a new shape are slow in every engine
        runner.run(inputs)
    per_instance: list[list[float]] = [[] for _ in runners]
    stop_at = time.perf_counter() + duration_s
    started = time.perf_counter()
    workers = [
        threading.Thread(target=_time_runner, args=(r, inputs, stop_at, min_runs, samples))
        for r, samples in zip(runners, per_instance, strict=True)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    all_samples = [s for samples in per_instance for s in samples]
    throughput = len(all_samples) * batch_size / wall
    return ProfilePoint(batch_size, len(runners), threads, latency_percentiles(all_samples),
                        throughput)


def profile_variant(
    factory: RunnerFactory,
    model: str,
    variant: str,
    batch_sizes: Sequence[int],
    settings: Sequence[tuple[int, int]] | None = None,
    duration_s: float = 0.3,
    progress: Progress | None = None,
    device: str = "auto",
    samples: dict[str, np.ndarray] | None = None,
) -> ProfileReport:
    """Profile one variant at every batch size under every (instances, threads) setting.

    `factory(RunnerOptions)` loads a fresh runner with the given thread count and device;
    batches are made of `samples` rows when given (see `batch_inputs`).
    """
    settings = list(settings or default_settings())
    report = ProfileReport(model, variant, available_cores())
    task = progress.add_task(f"profile {model}@{variant}", total=len(settings) * len(batch_sizes)) \
        if progress else None
    for instances, threads in settings:
        options = RunnerOptions(intra_op_threads=threads, inter_op_threads=1, device=device)
        runners = [factory(options) for _ in range(instances)]
        for runner in runners:
            runner.warmup()
        for batch_size in batch_sizes:
            report.points.append(measure_point(runners, batch_size, threads, duration_s,
                                               samples=samples))
            if progress is not None and task is not None:
                progress.advance(task)
    return report

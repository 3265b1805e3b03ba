"""The engine as a tuning dimension: ONNX Runtime or OpenVINO for an ONNX model, by measurement.

Both engines run the same `.onnx` file in process at batch 1 and at larger batches; the faster
one's best items/s wins when it beats the other by more than the noise margin, otherwise ONNX
Runtime (the default) stays. The figures are kept in the tuning report.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from surge.errors import ModelLoadError
from surge.runtimes import Runner, RunnerOptions, example_inputs, load_runner

ENGINES = ("onnxruntime", "openvino")
DEFAULT_ENGINE = "onnxruntime"
NOISE = 0.10  # back-to-back in-process runs on a busy 2-core machine differ by up to ~5-8%
BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class EngineFigure:
    """Items/s of one engine at one batch size, in process."""

    engine: str
    batch_size: int
    items_per_s: float


@dataclass(frozen=True)
class EngineChoice:
    """The engine chosen, the figures it was chosen on, and why."""

    engine: str
    figures: tuple[EngineFigure, ...]
    reason: str

    def best(self, engine: str) -> float:
        return max((f.items_per_s for f in self.figures if f.engine == engine), default=0.0)


def items_per_second(runner: Runner, batch_size: int, seconds: float,
                     clock: Callable[[], float] = time.perf_counter) -> float:
    """Items/s of `runner` at `batch_size` over about `seconds` (after one warm-up call)."""
    inputs = example_inputs(runner.signature, batch_size=batch_size)
    runner.run(inputs)
    calls, start = 0, clock()
    while True:
        runner.run(inputs)
        calls += 1
        elapsed = clock() - start
        if elapsed >= seconds:
            return calls * batch_size / elapsed


def candidate_engines() -> tuple[str, ...]:
    """The engines this machine can run an ONNX model on."""
    return ENGINES if importlib.util.find_spec("openvino") is not None else (DEFAULT_ENGINE,)


def decide(figures: Sequence[EngineFigure], noise: float = NOISE) -> EngineChoice:
    """The default engine unless another is faster (best items/s) by more than `noise`."""
    best = {e: max(f.items_per_s for f in figures if f.engine == e) for e in {f.engine for f in figures}}
    default = best.get(DEFAULT_ENGINE, 0.0)
    winner = max(best, key=lambda e: best[e])
    if winner != DEFAULT_ENGINE and best[winner] > default * (1 + noise):
        return EngineChoice(winner, tuple(figures),
                            f"{winner} {best[winner]:.0f} items/s vs {DEFAULT_ENGINE} {default:.0f} "
                            f"(+{best[winner] / default - 1:.0%}, above the {noise:.0%} noise margin)")
    ratio = max(best.values()) / default - 1 if default else 0.0
    return EngineChoice(DEFAULT_ENGINE, tuple(figures),
                        f"{DEFAULT_ENGINE} kept: the best alternative is {ratio:+.0%} "
                        f"(the margin to switch is {noise:.0%})")


def measure_engines(path: Path, max_batch_size: int, seconds: float = 1.0, threads: int = 0,
                    engines: Sequence[str] | None = None) -> list[EngineFigure]:
    """Items/s of each engine on the ONNX file at `path`, at each of BATCH_SIZES it allows."""
    sizes = [b for b in BATCH_SIZES if b <= max(max_batch_size, 1)]
    figures = []
    for engine in engines or candidate_engines():
        try:
            runner = load_runner(path, RunnerOptions(intra_op_threads=threads), engine)
        except ModelLoadError:
            if engine == DEFAULT_ENGINE:
                raise
            continue  # e.g. OpenVINO has no ai.onnx.ml operators (tree ensembles): not a choice
        if not runner.signature.batched:
            sizes = [1]
        figures += [EngineFigure(engine, b, items_per_second(runner, b, seconds)) for b in sizes]
    return figures


def choose_engine(path: Path, max_batch_size: int, seconds: float = 1.0,
                  threads: int = 0) -> EngineChoice | None:
    """The engine for the ONNX model at `path`; None when there is nothing to choose from."""
    if path.suffix != ".onnx" or len(candidate_engines()) < 2:
        return None
    return decide(measure_engines(path, max_batch_size, seconds, threads))

"""An ONNX Runtime run can be made to fail from another thread (its RunOptions' terminate
flag), under any wrapper: how an in-process instance stops a hung batch. Other engines cannot."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from surge.runtimes import RunnerOptions
from surge.runtimes.base import WrappedRunner, interruptible
from surge.runtimes.onnx_runner import OnnxRunner
from tests.integration.engine.onnx_models import counting_loop


def test_an_interrupted_run_fails_and_the_next_runs_after_resume(tmp_path: Path) -> None:
    runner = OnnxRunner(counting_loop(tmp_path / "loop.onnx"), RunnerOptions(1))
    wrapped = WrappedRunner(WrappedRunner(runner, runner.signature), runner.signature)
    engine = interruptible(wrapped)
    assert engine is runner
    timer = threading.Timer(0.2, engine.interrupt)
    timer.start()
    began = time.monotonic()
    with pytest.raises(Exception, match="terminate"):
        wrapped.run({"n": np.array([10**15], np.int64)})  # years, uninterrupted
    assert time.monotonic() - began < 5.0
    with pytest.raises(Exception, match="terminate"):  # until resumed
        wrapped.run({"n": np.array([3], np.int64)})
    engine.resume()
    assert wrapped.run({"n": np.array([3], np.int64)})["y"].tolist() == [6]


class Uninterruptible:
    """A runner with no way to stop a run (as torch, OpenVINO, TFLite and Keras)."""

    signature = None
    device = "cpu"

    def warmup(self) -> None: ...

    def run(self, inputs: object) -> dict[str, np.ndarray]:
        return {}


def test_a_runner_that_cannot_be_interrupted_is_none() -> None:
    runner = Uninterruptible()
    assert interruptible(WrappedRunner(runner, None)) is None  # type: ignore[arg-type]

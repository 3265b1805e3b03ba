"""The engine as a tuning dimension: decided by measurement, with a noise margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from surge.errors import ModelLoadError
from surge.repository import Repository
from surge.runtimes.base import Signature, TensorSpec
from surge.tuning import engines
from surge.tuning.apply import write_engine
from surge.tuning.engines import EngineFigure, choose_engine, decide, items_per_second
from tests.unit.formats.builders import tiny_onnx


def _figures(ort: float, ov: float) -> list[EngineFigure]:
    return [EngineFigure("onnxruntime", 1, ort / 2), EngineFigure("onnxruntime", 8, ort),
            EngineFigure("openvino", 1, ov / 2), EngineFigure("openvino", 8, ov)]


def test_a_faster_engine_beyond_the_noise_margin_wins() -> None:
    choice = decide(_figures(ort=1000, ov=1200))
    assert choice.engine == "openvino"
    assert choice.best("openvino") == 1200
    assert "+20%" in choice.reason


@pytest.mark.parametrize(("ort", "ov"), [(1000, 1050), (1000, 700)])
def test_onnx_runtime_stays_within_the_noise_margin_or_when_faster(ort: float, ov: float) -> None:
    assert decide(_figures(ort, ov)).engine == "onnxruntime"


class _CountingRunner:
    def __init__(self) -> None:
        self.calls = 0
        self.signature = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 3)),))
        self.device = "cpu"

    def warmup(self) -> None: ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"y": np.zeros((len(inputs["x"]), 3), np.float32)}


def test_items_per_second_counts_items_over_the_clock() -> None:
    ticks = iter(float(t) for t in range(100))
    runner = _CountingRunner()
    assert items_per_second(runner, batch_size=8, seconds=4.0, clock=lambda: next(ticks)) == 8.0
    assert runner.calls == 5  # one warm-up call, then 4 timed ones of one tick each


def test_both_engines_are_measured_on_an_onnx_model(tmp_path: Path) -> None:
    choice = choose_engine(tiny_onnx(tmp_path / "m.onnx"), max_batch_size=8, seconds=0.05)
    assert choice is not None
    measured = {(f.engine, f.batch_size) for f in choice.figures}
    assert measured == {(e, b) for e in ("onnxruntime", "openvino") for b in (1, 8)}
    assert all(f.items_per_s > 0 for f in choice.figures)
    assert choice.engine in ("onnxruntime", "openvino")


def test_an_engine_that_cannot_read_the_model_is_no_choice(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO cannot read a LightGBM model's tree operators: ONNX Runtime is kept, and the
    tune goes on instead of failing."""
    real = engines.load_runner

    def load(path: Path, options: object, engine: str) -> object:
        if engine == "openvino":
            raise ModelLoadError(f"{path}: OpenVINO cannot read it (TreeEnsembleClassifier)")
        return real(path, options, engine)

    monkeypatch.setattr(engines, "load_runner", load)
    choice = choose_engine(tiny_onnx(tmp_path / "m.onnx"), max_batch_size=8, seconds=0.05)
    assert choice is not None
    assert choice.engine == "onnxruntime"
    assert {f.engine for f in choice.figures} == {"onnxruntime"}


def test_only_onnx_models_have_an_engine_to_choose(tmp_path: Path) -> None:
    assert choose_engine(tmp_path / "model.pt2", max_batch_size=8) is None


def test_write_engine_sets_openvino_and_leaves_auto_for_onnx_runtime(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("max_batch_size: 8\n")
    write_engine(tmp_path, "onnxruntime")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"max_batch_size": 8}
    write_engine(tmp_path, "openvino")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["engine"] == "openvino"


def test_configured_openvino_engine_also_runs_the_onnx_variants(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    tiny_onnx(tmp_path / "m" / "1" / "model.onnx")
    variant = tmp_path / "m" / "variants" / "int8-static"
    variant.mkdir(parents=True)
    tiny_onnx(variant / "model.onnx")
    (variant / "variant.yaml").write_text("name: int8-static\n")
    (tmp_path / "m" / "config.yaml").write_text("engine: openvino\n")
    assert Repository(tmp_path).load("m@int8-static").signature.platform == "openvino"

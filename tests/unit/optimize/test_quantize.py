"""int8 quantization: weights really int8, outputs close to fp32, calibration required."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest

import surge.platform
from surge.errors import ConfigError
from surge.optimize import Int8DynamicConfig, Int8StaticConfig, PruneConfig, Tolerance, quantize
from surge.runtimes import load_runner
from tests.unit.optimize.models import MLP, image_source, seeded, vector_source


def _weight_types(path: Path) -> set[int]:
    model = onnx.load(str(path))
    return {t.data_type for t in model.graph.initializer if len(t.dims) >= 2}


quantize_module = importlib.import_module("surge.optimize.quantize")  # `quantize` is the function
# Without VNNI, int8 weights saturate ONNX Runtime's u8s8 products: the weights are uint8 there.
WEIGHTS = onnx.TensorProto.UINT8 if quantize_module.lacks_vnni() else onnx.TensorProto.INT8


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_has_int8_weights_and_stays_close(tmp_path: Path, method: str) -> None:
    source = image_source(tmp_path)
    variant = quantize(source, Int8StaticConfig(method=method), tmp_path / "q",
                       Tolerance(min_top1=0.8))
    assert _weight_types(variant.path) == {WEIGHTS}
    assert variant.details["int8_weights"] == 4
    assert variant.details["float_weights"] == 0
    ops = {n.op_type for n in onnx.load(str(variant.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert variant.check.passed, variant.check.failures
    scale = np.abs(source.reference_outputs()["logits"]).max()
    assert variant.check.max_abs < 0.1 * scale
    assert variant.engine == "onnxruntime"
    assert variant.method == "quantize/int8-static"


def test_static_keeps_fp32_io_and_dynamic_batch(tmp_path: Path) -> None:
    variant = quantize(image_source(tmp_path), Int8StaticConfig(), tmp_path / "q")
    runner = load_runner(variant.path)
    spec = runner.signature.inputs[0]
    assert (spec.name, spec.datatype, spec.shape) == ("image", "FP32", (-1, 1, 8, 8))
    out = runner.run({"image": np.zeros((5, 1, 8, 8), np.float32)})["logits"]
    assert out.shape == (5, 4)
    assert out.dtype == np.float32


def test_static_excluded_nodes_stay_fp32(tmp_path: Path) -> None:
    source = image_source(tmp_path)
    first = quantize(source, Int8StaticConfig(), tmp_path / "all")
    conv = next(n.name for n in onnx.load(str(source.ensure_onnx())).graph.node
                if n.op_type == "Conv")
    excluded = quantize(source, Int8StaticConfig(exclude=(conv,)), tmp_path / "excl")
    assert excluded.details["float_weights"] == first.details["float_weights"] + 1


def test_dynamic_quantizes_matmul_weights(tmp_path: Path) -> None:
    source = vector_source(tmp_path, seeded(MLP()))
    scale = float(np.abs(source.reference_outputs()["y"]).mean())
    variant = quantize(source, Int8DynamicConfig(), tmp_path / "d",
                       Tolerance(mean_abs=0.02 * scale))
    assert WEIGHTS in _weight_types(variant.path)
    assert variant.details["int8_weights"] == 3
    assert variant.check.passed, variant.check.failures


@pytest.mark.parametrize(("uint8", "weights"), [(True, onnx.TensorProto.UINT8),
                                                (False, onnx.TensorProto.INT8)])
def test_weight_type_follows_the_config(tmp_path: Path, uint8: bool, weights: int) -> None:
    source = image_source(tmp_path)
    static = quantize(source, Int8StaticConfig(weight_uint8=uint8), tmp_path / "q")
    assert _weight_types(static.path) == {weights}
    mlp = vector_source(tmp_path, seeded(MLP()))
    dynamic = quantize(mlp, Int8DynamicConfig(weight_uint8=uint8), tmp_path / "d")
    assert weights in _weight_types(dynamic.path)


@pytest.mark.parametrize(("machine", "flags", "lacks"), [
    ("x86_64", "fpu sse2 avx2 fma", True),
    ("x86_64", "fpu avx2 avx512f avx512_vnni", False),
    ("x86_64", "fpu avx2 avx_vnni", False),
    ("aarch64", "fp asimd", False),
])
def test_vnni_is_read_from_the_cpus_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          machine: str, flags: str, lacks: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(surge.platform, "CPUINFO", cpuinfo)
    monkeypatch.setattr(surge.platform.stdlib_platform, "machine", lambda: machine)
    assert surge.platform.lacks_vnni() is lacks
    config = Int8StaticConfig()
    assert quantize_module._weight_type(config.weight_uint8).name == (
        "QUInt8" if lacks else "QInt8")


def test_static_without_calibration_is_refused(tmp_path: Path) -> None:
    source = image_source(tmp_path)
    source.calibration = None
    with pytest.raises(ConfigError, match="needs calibration data"):
        quantize(source, Int8StaticConfig(), tmp_path / "q")


def test_unknown_calibration_method_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown calibration method 'median'"):
        Int8StaticConfig(method="median")


def test_quantize_refuses_another_verbs_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="quantize\\(\\) takes a QuantizeConfig, got PruneConfig"):
        quantize(image_source(tmp_path), PruneConfig(ratio=0.5), tmp_path / "q")  # type: ignore[arg-type]

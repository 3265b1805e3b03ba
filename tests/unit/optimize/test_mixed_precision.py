"""bf16 / fp16 variants keep FP32 inputs and outputs with the original's names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from surge.errors import ConfigError
from surge.optimize import Bf16Config, Fp16Config, Tolerance, mixed_precision
from surge.runtimes import load_runner
from tests.unit.optimize.models import image_source


def test_bf16_program_keeps_the_fp32_signature(tmp_path: Path) -> None:
    source = image_source(tmp_path)
    variant = mixed_precision(source, Bf16Config(), tmp_path / "bf16", Tolerance(min_top1=0.9))
    assert variant.path.suffix == ".pt2"
    assert variant.engine == "torch_export"
    runner = load_runner(variant.path)
    assert [(s.name, s.datatype, s.shape) for s in runner.signature.inputs] == [
        ("image", "FP32", (-1, 1, 8, 8))]
    assert [(s.name, s.datatype) for s in runner.signature.outputs] == [("logits", "FP32")]
    assert variant.check.passed, variant.check.failures
    scale = np.abs(source.reference_outputs()["logits"]).max()
    assert 0 < variant.check.max_abs < 0.05 * scale  # bf16 rounding: close but not identical


def test_bf16_program_computes_in_bf16(tmp_path: Path) -> None:
    variant = mixed_precision(image_source(tmp_path), Bf16Config(), tmp_path / "bf16")
    program = torch.export.load(str(variant.path))
    dtypes = {p.dtype for p in program.state_dict.values()}
    assert dtypes == {torch.bfloat16}


def test_fp16_onnx_has_fp16_weights_and_fp32_io(tmp_path: Path) -> None:
    variant = mixed_precision(image_source(tmp_path), Fp16Config(), tmp_path / "fp16",
                              Tolerance(min_top1=0.9))
    model = onnx.load(str(variant.path))
    weights = {t.data_type for t in model.graph.initializer if len(t.dims) >= 2}
    assert weights == {onnx.TensorProto.FLOAT16}
    io = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
    assert io == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    assert variant.check.passed, variant.check.failures


def test_fp16_torch_engine(tmp_path: Path) -> None:
    variant = mixed_precision(image_source(tmp_path), Fp16Config(engine="torch"), tmp_path / "t")
    assert variant.engine == "torch_export"
    assert variant.details["dtype"] == "float16"
    assert variant.check.max_abs < 0.05


def test_bad_engines_are_refused() -> None:
    with pytest.raises(ConfigError, match="bf16 runs on engine 'torch'"):
        Bf16Config(engine="onnxruntime")
    with pytest.raises(ConfigError, match="unknown fp16 engine 'tensorrt'"):
        Fp16Config(engine="tensorrt")

"""int8 quantization with ONNX Runtime's quantization tools: dynamic and static (QDQ)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from surge.errors import ConfigError
from surge.optimize.registry import Artifact, OptimizeConfig, dispatch, register
from surge.optimize.source import Inputs, ModelSource
from surge.optimize.variant import Tolerance, Variant
from surge.platform import lacks_vnni

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class QuantizeConfig(OptimizeConfig):
    """Base of the int8 formats made by `quantize`."""

    verb = "quantize"


@dataclass(frozen=True)
class Int8DynamicConfig(QuantizeConfig):
    """Weights int8 ahead of time; activations quantized per batch at run time (MatMul-heavy
    models such as transformers)."""

    format: ClassVar[str] = "int8-dynamic"
    per_channel: bool = True
    """One scale per output channel of each weight (more accurate, same speed)."""
    reduce_range: bool = False
    """7-bit weights (u8s8 products that cannot saturate; `weight_uint8` loses less)."""
    weight_uint8: bool | None = None
    """uint8 weights (u8u8 kernels) rather than int8; None: where this CPU lacks VNNI
    (`lacks_vnni`)."""
    exclude: tuple[str, ...] = ()
    """Node names left in fp32 (layers that hurt accuracy when quantized)."""
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    """Operators to quantize; dynamic ConvInteger is slow on CPU, so convolutions are left out."""


@dataclass(frozen=True)
class Int8StaticConfig(QuantizeConfig):
    """QDQ int8 with activation ranges calibrated on representative inputs."""

    format: ClassVar[str] = "int8-static"
    method: str = "minmax"
    """Calibration method: minmax, entropy or percentile."""
    per_channel: bool = True
    activation_uint8: bool = True
    """uint8 activations (the fast u8s8 VNNI kernels) rather than int8."""
    weight_uint8: bool | None = None
    """uint8 weights (u8u8 kernels) rather than int8; None: where this CPU lacks VNNI
    (`lacks_vnni`)."""
    exclude: tuple[str, ...] = ()
    calibration_samples: int = 256
    """Rows of the calibration data used (entropy/percentile histograms cost memory per row)."""
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}; expected one of "
                              f"{', '.join(CALIBRATION_METHODS)}")
        if self.calibration_samples < 1 or self.batch_size < 1:
            raise ConfigError("calibration_samples and batch_size must be positive")


def quantize(source: ModelSource, config: QuantizeConfig, out_dir: Path,
             tolerance: Tolerance | None = None) -> Variant:
    """Quantize the model's ONNX graph to int8 in the format `config` names."""
    return dispatch("quantize", QuantizeConfig, source, config, out_dir, tolerance)


def _weight_type(uint8: bool | None) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if (lacks_vnni() if uint8 is None else uint8) else QuantType.QInt8


def _preprocessed(source: ModelSource, work: Path) -> Path:
    """Shape inference and graph optimization first: the quantizer then sees fused Conv+BN."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    output = work / "pre.onnx"
    try:
        quant_pre_process(str(source.ensure_onnx()), str(output), skip_symbolic_shape=True)
    except Exception:  # some graphs defeat the optimizer; quantizing the original still works
        return source.ensure_onnx()
    return output


@register(Int8DynamicConfig)
def _make_dynamic(source: ModelSource, config: Int8DynamicConfig, out_dir: Path) -> Artifact:
    from onnxruntime.quantization import quantize_dynamic

    output = out_dir / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        quantize_dynamic(
            str(_preprocessed(source, Path(tmp))), str(output), per_channel=config.per_channel,
            reduce_range=config.reduce_range, weight_type=_weight_type(config.weight_uint8),
            nodes_to_exclude=list(config.exclude) or None,
            op_types_to_quantize=list(config.op_types) or None,
        )
    return Artifact(output, "onnxruntime", int8_summary(output))


class _Reader:
    """Feeds calibration batches to ONNX Runtime's calibrator."""

    def __init__(self, data: Inputs, rows: int, batch_size: int) -> None:
        self._batches = self._iterate(data, rows, batch_size)

    @staticmethod
    def _iterate(data: Inputs, rows: int, batch_size: int) -> Iterator[Inputs]:
        for start in range(0, rows, batch_size):
            yield {n: np.ascontiguousarray(a[start:start + batch_size]) for n, a in data.items()}

    def get_next(self) -> Inputs | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # ORT calls this between passes of some calibrators
        pass


@register(Int8StaticConfig)
def _make_static(source: ModelSource, config: Int8StaticConfig, out_dir: Path) -> Artifact:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    data = source.calibration
    if data is None:
        raise ConfigError(f"int8-static for {source.name!r} needs calibration data (--calib DATA.npy)")
    rows = min(config.calibration_samples, len(next(iter(data.values()))))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    output = out_dir / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        quantize_static(
            str(_preprocessed(source, Path(tmp))), str(output),
            calibration_data_reader=_Reader(data, rows, config.batch_size),
            quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            activation_type=QuantType.QUInt8 if config.activation_uint8 else QuantType.QInt8,
            weight_type=_weight_type(config.weight_uint8),
            nodes_to_exclude=list(config.exclude) or None,
            calibrate_method=method,
        )
    details = int8_summary(output)
    details["calibration_rows"] = rows
    return Artifact(output, "onnxruntime", details)


def int8_summary(path: Path) -> dict[str, Any]:
    """Counts of int8 vs float weight initializers: proof the weights really are int8."""
    import onnx

    model = onnx.load(str(path))
    int8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    weights = [t for t in model.graph.initializer if len(t.dims) >= 2]
    return {
        "int8_weights": sum(t.data_type in int8 for t in weights),
        "float_weights": sum(t.data_type == onnx.TensorProto.FLOAT for t in weights),
    }

"""bf16 and fp16 variants that keep the original's FP32 inputs and outputs.

Measured on this project's CPUs (AVX-512 BF16/VNNI): PyTorch running bf16 weights through oneDNN
is the fast path (about 2x fp32 on a ResNet-18 at batch 32), so bf16 is a torch.export program.
ONNX Runtime has no fast fp16 CPU kernels, so the fp16 ONNX variant is meant for GPUs; it is
still checked here and the benchmark reports its CPU speed as measured.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from surge.errors import ConfigError
from surge.optimize.registry import Artifact, OptimizeConfig, dispatch, register
from surge.optimize.source import ModelSource
from surge.optimize.variant import Tolerance, Variant

ENGINES = ("torch", "onnxruntime")


class PrecisionConfig(OptimizeConfig):
    verb = "mixed_precision"
    engine: str


@dataclass(frozen=True)
class Bf16Config(PrecisionConfig):
    """bf16 weights and activations in a torch.export program; FP32 in and out."""

    format: ClassVar[str] = "bf16"
    engine: str = "torch"
    channels_last: bool = True
    """NHWC activations for 4-D inputs: oneDNN's bf16 convolutions run fastest that way."""
    fold_batchnorm: bool = True
    """Fold BatchNorm into the preceding convolution first (fewer ops, one rounding less)."""

    def __post_init__(self) -> None:
        if self.engine != "torch":
            raise ConfigError(f"bf16 runs on engine 'torch' here, not {self.engine!r}")


@dataclass(frozen=True)
class Fp16Config(PrecisionConfig):
    """fp16: an ONNX graph converted with FP32 I/O kept (for GPUs), or a torch.export program."""

    format: ClassVar[str] = "fp16"
    engine: str = "onnxruntime"
    block_ops: tuple[str, ...] = ()
    """ONNX operator types kept in fp32 (numerically fragile ones)."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown fp16 engine {self.engine!r}; expected one of {ENGINES}")


def mixed_precision(source: ModelSource, config: PrecisionConfig, out_dir: Path,
                    tolerance: Tolerance | None = None) -> Variant:
    """Make a reduced-precision variant whose interface stays FP32."""
    return dispatch("mixed_precision", PrecisionConfig, source, config, out_dir, tolerance)


def cast_wrapper(module: Any, input_names: list[str], output_names: list[str], dtype: Any,
                 channels_last: bool = False) -> Any:
    """A module taking and returning FP32 tensors named like the original's, computing in
    `dtype`. Non-float inputs (token ids, masks) pass through unchanged."""
    import torch
    from torch import nn

    class CastWrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
            cast = [self._cast(a) for a in args]
            result = self.inner(*cast)
            outputs = result if isinstance(result, tuple | list) else (result,)
            return {n: t.float() for n, t in zip(output_names, outputs, strict=True)}

        @staticmethod
        def _cast(a: torch.Tensor) -> torch.Tensor:
            if not a.is_floating_point():
                return a
            a = a.to(dtype)
            return a.contiguous(memory_format=torch.channels_last) if channels_last and a.dim() == 4 else a

    # torch.export names the program's inputs after forward's parameters.
    param = inspect.Parameter
    CastWrapper.forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [param("self", param.POSITIONAL_OR_KEYWORD)]
        + [param(n, param.POSITIONAL_OR_KEYWORD) for n in input_names]
    )
    return CastWrapper().eval()


def fold_batchnorm(module: Any) -> Any:
    """Conv+BN folded by torch.fx; models fx cannot trace are returned unchanged."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(module).eval())
    except Exception:  # fx cannot trace data-dependent control flow; folding is only a bonus
        return module


def torch_program(source: ModelSource, dtype: Any, out_dir: Path, channels_last: bool = False,
                  fold: bool = True) -> Artifact:
    """The source module as a torch.export program computing in `dtype` with FP32 I/O (fp32
    too: the benchmark's baseline for the torch engine)."""
    import torch

    from surge.export import export_pt2

    module = source.require_module("a torch reduced-precision variant")
    base = fold_batchnorm(module) if fold else copy.deepcopy(module)
    low = base.eval().to(dtype)
    four_d = any(s.ndim == 4 for s in source.samples.values())
    if channels_last and four_d:
        low = low.to(memory_format=torch.channels_last)
    wrapper = cast_wrapper(low, source.input_names, source.output_names, dtype,
                           channels_last and four_d)
    path = export_pt2(wrapper, source.example(), out_dir / "model.pt2")
    return Artifact(path, "torch_export", {"dtype": str(dtype).removeprefix("torch."),
                                           "channels_last": channels_last and four_d})


@register(Bf16Config)
def _make_bf16(source: ModelSource, config: Bf16Config, out_dir: Path) -> Artifact:
    import torch

    return torch_program(source, torch.bfloat16, out_dir, config.channels_last,
                         config.fold_batchnorm)


@register(Fp16Config)
def _make_fp16(source: ModelSource, config: Fp16Config, out_dir: Path) -> Artifact:
    if config.engine == "torch":
        import torch

        return torch_program(source, torch.float16, out_dir, False, True)
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source.ensure_onnx()))
    converted = convert_float_to_float16(model, keep_io_types=True,
                                         op_block_list=list(config.block_ops) or None)
    path = out_dir / "model.onnx"
    onnx.save(converted, str(path))
    return Artifact(path, "onnxruntime", {"dtype": "float16", "io": "float32"})

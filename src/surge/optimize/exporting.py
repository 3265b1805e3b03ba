"""`export_onnx`: the fp32 ONNX variant of a PyTorch model, with a dynamic batch dim."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from surge.optimize.registry import Artifact, OptimizeConfig, apply, register
from surge.optimize.source import ModelSource
from surge.optimize.variant import Tolerance, Variant


@dataclass(frozen=True)
class OnnxExportConfig(OptimizeConfig):
    """Export to ONNX (fp32), checked for parity with the PyTorch module."""

    verb: ClassVar[str] = "export_onnx"
    format: ClassVar[str] = "onnx"
    opset: int = 18


def export_onnx(source: ModelSource, out_dir: Path, config: OnnxExportConfig | None = None,
                tolerance: Tolerance | None = None) -> Variant:
    """Export the source module to `out_dir/model.onnx` and check it against the module."""
    return apply(source, config or OnnxExportConfig(), out_dir,
                 tolerance or Tolerance(max_abs=1e-3))


@register(OnnxExportConfig)
def _make_onnx(source: ModelSource, config: OnnxExportConfig, out_dir: Path) -> Artifact:
    from surge.export import export_onnx as export

    path = out_dir / "model.onnx"
    if source.module is None:  # already ONNX: the variant is a copy of it
        shutil.copyfile(source.ensure_onnx(), path)
    else:
        export(source.module, source.example(), path, source.input_names, source.output_names,
               opset=config.opset)
    return Artifact(path, "onnxruntime", {"opset": config.opset})

"""Export a box-predicting model (decoding included) to ONNX with fixed-size, named V2 outputs."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from surge.export import export_onnx

OUTPUT_NAMES = ("boxes", "scores", "labels")


def export_boxes_model(model: nn.Module, example: torch.Tensor, path: Path, input_name: str,
                       k: int) -> Path:
    """Write `model` as ONNX: input -> boxes [-1, k, 4], scores [-1, k], labels [-1, k].

    The exporter leaves top-K's length symbolic; it is fixed here so the served signature says
    boxes FP32 [-1, K, 4], scores FP32 [-1, K], labels INT64 [-1, K].
    """
    export_onnx(model, (example,), path, [input_name], list(OUTPUT_NAMES))
    graph = onnx.load(str(path))
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        dims[1].ClearField("dim_param")
        dims[1].dim_value = k
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return Path(path)

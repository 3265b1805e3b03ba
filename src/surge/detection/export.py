"""Export the detector (network + decoding) to ONNX with fixed-size, named V2 outputs."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from surge.detection.model import Detector
from surge.export import export_onnx

INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")


def export_detector(model: Detector, path: Path, size: int = 128) -> Path:
    """Write `model` as ONNX: image UINT8 [-1, size, size] -> boxes, scores, labels.

    The exporter leaves top-K's length symbolic; it is fixed here so the served signature says
    boxes FP32 [-1, K, 4], scores FP32 [-1, K], labels INT64 [-1, K].
    """
    example = torch.zeros((2, size, size), dtype=torch.uint8)
    export_onnx(model, (example,), path, [INPUT_NAME], list(OUTPUT_NAMES))
    graph = onnx.load(str(path))
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        dims[1].ClearField("dim_param")
        dims[1].dim_value = model.k
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return Path(path)

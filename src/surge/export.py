"""Export a PyTorch module to servable files: ONNX (dynamic batch dim) and torch.export `.pt2`."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def _batch_dynamic(example: tuple[torch.Tensor, ...]) -> tuple[dict[int, object], ...]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return tuple({0: batch} for _ in example)


def export_pt2(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Save a `torch.export` program whose dim 0 is dynamic."""
    module = module.eval()
    program = torch.export.export(module, example, dynamic_shapes=_batch_dynamic(example))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def export_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int = 18,
) -> Path:
    """Export with the batch dim (dim 0 of every input and output) dynamic."""
    module = module.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
        )
    return path

"""Tiny deterministic models for tests: a Linear computing 2x + 1, a two-input adder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from surge.export import export_onnx, export_pt2


class TwoXPlusOne(nn.Module):
    """y = 2x + 1 on [N, 4] FP32."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        with torch.no_grad():
            self.linear.weight.copy_(2 * torch.eye(4))
            self.linear.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def two_x_plus_one() -> TwoXPlusOne:
    return TwoXPlusOne()


def write_onnx(path: Path) -> Path:
    return export_onnx(TwoXPlusOne(), (torch.zeros(2, 4),), path, ["x"], ["y"])


def write_pt2(path: Path) -> Path:
    return export_pt2(TwoXPlusOne(), (torch.zeros(2, 4),), path)


def make_repo(root: Path, name: str = "tiny", versions: tuple[int, ...] = (1,),
              config: str = "max_batch_size: 8\n") -> Path:
    """A repository with `name` holding the 2x+1 ONNX model in each version."""
    model_dir = root / name
    for version in versions:
        write_onnx(model_dir / str(version) / "model.onnx")
    (model_dir / "config.yaml").write_text(config)
    return root

"""Tiny deterministic models and sources for the optimizer's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from surge.optimize import ModelSource


class TinyCNN(nn.Module):
    """conv-bn-relu x2 -> pool -> linear: a conv/bn/linear chain for pruning."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, 16), nn.ReLU(),
                                  nn.Linear(16, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...] = (8, 32, 32, 4)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(cin, cout), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.normal_(m.weight, std=0.5)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def image_source(tmp_path: Path, module: nn.Module | None = None, rows: int = 64,
                 task: str | None = "classification") -> ModelSource:
    module = module or seeded(TinyCNN())
    x = np.random.default_rng(0).random((rows, 1, 8, 8), dtype=np.float32)
    return ModelSource("tiny", ["image"], ["logits"], {"image": x}, module=module, task=task,
                       calibration={"image": x}, work_dir=tmp_path)


def vector_source(tmp_path: Path, module: nn.Module, features: int = 8,
                  rows: int = 64) -> ModelSource:
    x = np.random.default_rng(1).standard_normal((rows, features)).astype(np.float32)
    return ModelSource("mlp", ["x"], ["y"], {"x": x}, module=module.eval(), task=None,
                       calibration={"x": x}, work_dir=tmp_path)

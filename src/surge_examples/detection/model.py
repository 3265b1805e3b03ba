"""A small single-stage, anchor-free detector (CenterNet style) for 128x128 grayscale canvases.

`CenterNet` maps an image batch to one tensor of raw maps at stride 4: per-class center heatmap
logits (C channels), box width/height in pixels (2) and the center's sub-cell offset (2). The
encoder goes down to 1/16 and a small feature pyramid comes back up to 1/4, adding the encoder's
1/8 and 1/4 maps on the way, so the heads see both the coarse context that tells garments apart
and the fine detail of the smallest items. A pipeline may split it between any two top-level
blocks (or inside `stem`, `down8`, `down16`): the skip tensors travel to the next stage.

`Detector` wraps it with the decoding the served model runs: sigmoid, 3x3 max-pool peak
extraction (a peak survives only where it is its neighbourhood's maximum, which is what NMS does
for center heatmaps), top-K over all classes and positions, and a soft suppression across
classes (a box overlapping a higher-scoring box of another class, IoU > 0.5, keeps 0.7 of its
score: one item rarely holds two garments, but its runner-up class still counts for mAP),
giving fixed-size outputs:

    input   image   UINT8 [-1, 128, 128]   the canvas, 0..255
    output  boxes   FP32  [-1, K, 4]       x1, y1, x2, y2 in pixels
    output  scores  FP32  [-1, K]          peak heat in [0, 1], descending
    output  labels  INT64 [-1, K]          class index 0..C-1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surge.errors import ConfigError

STRIDE = 4
MAX_K = 10_000  # detections per image: K rows of every output; more is a typo, not a need
# Cross-class soft suppression: IoU above which a box is taken for the same item as a
# higher-scoring box of another class, and the factor its score is multiplied by then.
CROSS_CLASS_IOU = 0.5
CROSS_CLASS_FACTOR = 0.7
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


class Fuse(nn.Module):
    """Top-down merge: a 1x1 lateral of the coarse map, 2x nearest upsampling, plus the finer
    map of the way down, then a 3x3 conv (a feature pyramid's step)."""

    def __init__(self, coarse: int, fine: int) -> None:
        super().__init__()
        self.lateral = nn.Sequential(nn.Conv2d(coarse, fine, 1, bias=False), nn.BatchNorm2d(fine))
        self.conv = conv_bn(fine, fine)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.lateral(coarse), scale_factor=2.0, mode="nearest")
        return self.conv(F.relu(up + fine))


class CenterNet(nn.Module):
    """image [N, H, W] -> maps [N, C + 4, H/4, W/4]: C heat logits, w, h (raw), dx, dy (raw).

    Thin at high resolution, wide at 1/8 and 1/16, where similar garments are told apart and
    where channels cost the fewest multiply-adds per image.
    """

    def __init__(self, width: int = 12, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.normalize = Normalize()
        self.stem = nn.Sequential(conv_bn(1, w, 2), conv_bn(w, 2 * w, 2))  # 1/4
        self.down8 = nn.Sequential(conv_bn(2 * w, 4 * w, 2), Residual(4 * w))
        self.down16 = nn.Sequential(conv_bn(4 * w, 8 * w, 2), Residual(8 * w), Residual(8 * w))
        self.fuse8 = Fuse(8 * w, 4 * w)
        self.fuse4 = Fuse(4 * w, 2 * w)
        self.head = Head(2 * w, classes)
        self.classes = classes
        self.width = width

    # What the library's detection task trains through (surge.tasks.detection.DetectionModel).
    def detection_loss(self) -> nn.Module:
        from surge_examples.detection.training import CenterNetLoss

        return CenterNetLoss(self.classes)

    def detector(self, k: int = 32) -> Detector:
        return Detector(self, k)

    def detector_factory(self, k: int = 32) -> tuple[str, dict[str, int]]:
        return f"{__name__}:detector", {"width": self.width, "classes": self.classes, "k": k}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] % 16 or image.shape[-1] % 16:
            # the pyramid adds 2x-upsampled coarse maps to finer ones: a side that does not
            # halve evenly four times stops it with a tensor-size error
            raise ConfigError(f"CenterNet takes images whose sides are multiples of 16, got "
                              f"{image.shape[-2]}x{image.shape[-1]}")
        x4 = self.stem(self.normalize(image))
        x8 = self.down8(x4)
        x16 = self.down16(x8)
        return self.head(self.fuse4(self.fuse8(x16, x8), x4))


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
    flat = peaks.reshape(n, c * h * w)
    if k > c * h * w:  # a small image has fewer positions than K: pad with score-0 entries
        flat = F.pad(flat, (0, k - c * h * w))
    scores, index = torch.topk(flat, k)
    index = index.clamp(max=c * h * w - 1)  # padding reads the last position, at score 0
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
    return suppress_other_classes(boxes, scores, labels)


def box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU within each row: boxes [N, K, 4] x1y1x2y2 -> [N, K, K]."""
    top_left = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).prod(-1)
    return inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-6)


def suppress_other_classes(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale by CROSS_CLASS_FACTOR the score of each box that overlaps (IoU > CROSS_CLASS_IOU)
    a higher-scoring box of another class; return all K again, best first."""
    overlaps = box_iou(boxes) > CROSS_CLASS_IOU  # [N, i, j]
    other_class = labels[:, :, None] != labels[:, None, :]
    beaten = scores[:, None, :] > scores[:, :, None]  # box j outscores box i
    hit = (overlaps & other_class & beaten).to(scores.dtype).amax(2)
    scores = scores * (1.0 - hit * (1.0 - CROSS_CLASS_FACTOR))
    scores, order = torch.topk(scores, scores.shape[1])
    boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    return boxes, scores, torch.gather(labels, 1, order)


class Detector(nn.Module):
    """The served model: CenterNet plus decoding. image UINT8 [N, H, W] -> boxes, scores, labels."""

    def __init__(self, net: CenterNet, k: int = 32) -> None:
        super().__init__()
        # k sizes every output: refused here, not by topk on the first request served
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise ConfigError(f"detector k (detections per image) must be an integer from 1 to "
                              f"{MAX_K}, got {k!r}")
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

"""Detection data as (inputs, targets) tensors and a loss with a classifier's call signature.

Targets are packed per canvas as float32 [M, 5] rows (x1, y1, x2, y2, class), class -1 marking
padding, so a detection split fits wherever a trainer expects `loss_fn(outputs, labels)` over
`inputs[i], labels[i]` pairs: batching, sharding and pipelining treat targets like labels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from surge.detection.coco import load_split
from surge.detection.loss import detection_loss

MAX_OBJECTS = 6


def pack_targets(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """boxes [N, M, 4] and labels [N, M] -> targets [N, M, 5]."""
    return torch.cat([boxes.float(), labels.float().unsqueeze(-1)], dim=-1)


def unpack_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """targets [N, M, 5] -> boxes [N, M, 4], labels [N, M] int64 (-1 = padding)."""
    return targets[..., :4], targets[..., 4].round().long()


def load_tensors(directory: Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A split directory as (images uint8 [N, H, W], targets float32 [N, MAX_OBJECTS, 5])."""
    split = load_split(directory)
    boxes, labels = split.padded(MAX_OBJECTS)
    images = torch.from_numpy(split.images[:limit].copy())
    return images, pack_targets(torch.from_numpy(boxes[:limit]), torch.from_numpy(labels[:limit]))


def hflip(images: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor]:
    """Mirror the canvases where `mask` is set, and their boxes with them."""
    width = images.shape[-1]
    flipped = targets.clone()
    flipped[..., 0] = width - targets[..., 2]
    flipped[..., 2] = width - targets[..., 0]
    images = torch.where(mask[:, None, None], images.flip(-1), images)
    return images, torch.where(mask[:, None, None], flipped, targets)


class CenterNetLoss(torch.nn.Module):
    """loss(maps, targets): CenterNet's focal + size + offset loss (see `detection_loss`)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        boxes, labels = unpack_targets(targets)
        return detection_loss(maps, boxes, labels, self.classes)[0]

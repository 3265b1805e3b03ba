"""CenterNet's loss with a classifier's call signature, on the packed box targets of
`surge.tasks.coco` (x1, y1, x2, y2, class rows; class -1 = padding)."""

from __future__ import annotations

from pathlib import Path

import torch

from surge.tasks.coco import packed_targets, read_split, unpack_targets
from surge_examples.detection.loss import detection_loss

MAX_OBJECTS = 6  # CanvasSpec.max_objects: every split of the canvases packs to the same width


def load_tensors(directory: Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A split directory as (images uint8 [N, H, W], targets float32 [N, MAX_OBJECTS, 5])."""
    images, ground_truth = read_split(directory)
    images = images[:limit]
    targets = packed_targets(ground_truth, len(images), MAX_OBJECTS)
    return torch.from_numpy(images.copy()), torch.from_numpy(targets)


class CenterNetLoss(torch.nn.Module):
    """loss(maps, targets): CenterNet's focal + size + offset loss (see `detection_loss`)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        boxes, labels = unpack_targets(targets)
        return detection_loss(maps, boxes, labels, self.classes)[0]

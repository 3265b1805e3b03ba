"""CenterNet training targets and loss, vectorised over a padded batch of boxes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surge.errors import ConfigError
from surge_examples.detection.model import STRIDE, split_maps

SIZE_WEIGHT = 0.1  # CenterNet's weight for the size L1 (in stride units)
OFFSET_WEIGHT = 1.0
CLASS_WEIGHT = 1.0  # cross-entropy between the classes' logits at each object's center cell


@dataclass(frozen=True)
class Targets:
    """What the maps should be: heatmap [N, C, h, w]; per-object cell, size and offset."""

    heat: torch.Tensor
    cell: torch.Tensor  # int64 [N, M] flat index y * w + x of each object's center cell
    size: torch.Tensor  # [N, M, 2] width, height in pixels
    offset: torch.Tensor  # [N, M, 2] center minus its cell corner, in cells (0..1)
    valid: torch.Tensor  # bool [N, M]


def build_targets(boxes: torch.Tensor, labels: torch.Tensor, classes: int,
                  grid: tuple[int, int]) -> Targets:
    """boxes [N, M, 4] x1y1x2y2 pixels and labels [N, M] (-1 = padding) -> Targets on `grid`."""
    h, w = grid
    valid = labels >= 0
    center = (boxes[..., :2] + boxes[..., 2:]) / (2 * STRIDE)
    cell_xy = center.floor().clamp(min=0)
    cell_xy = torch.minimum(cell_xy, torch.tensor([w - 1.0, h - 1.0], device=boxes.device))
    size = boxes[..., 2:] - boxes[..., :2]
    # Gaussian radius grows with the smaller side; exactly 1.0 at the center cell (a positive).
    radius = (0.25 * size.min(-1).values / STRIDE).floor().clamp(min=0)
    sigma = (2 * radius + 1) / 6
    ys = torch.arange(h, dtype=boxes.dtype, device=boxes.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=boxes.dtype, device=boxes.device).view(1, 1, 1, w)
    d2 = (xs - cell_xy[..., 0, None, None]) ** 2 + (ys - cell_xy[..., 1, None, None]) ** 2
    gauss = torch.exp(-d2 / (2 * sigma[..., None, None] ** 2)) * valid[..., None, None]
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), classes).to(boxes.dtype)
    heat = (gauss.unsqueeze(2) * onehot[..., None, None]).amax(1)
    cell = (cell_xy[..., 1] * w + cell_xy[..., 0]).long()
    return Targets(heat, cell, size, center - cell_xy, valid)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of positives."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).to(logits.dtype)
    pos_loss = -torch.log(prob) * (1 - prob) ** 2 * pos
    neg_loss = -torch.log(1 - prob) * prob ** 2 * (1 - target) ** 4 * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def _at_cells(maps: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """[N, 2, h, w] sampled at flat cells [N, M] -> [N, M, 2]."""
    n, ch = maps.shape[:2]
    index = cell.unsqueeze(1).expand(n, ch, cell.shape[1])
    return torch.gather(maps.reshape(n, ch, -1), 2, index).transpose(1, 2)


def _center_class_loss(heat: torch.Tensor, targets: Targets, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the class logits at each object's center cell.

    The focal loss scores each class's heatmap on its own (sigmoids); this term makes the
    classes compete where an object is, which is what tells similar garments apart.
    """
    logits = _at_cells(heat, targets.cell)  # [N, M, C]
    valid = targets.valid
    if not bool(valid.any()):
        return heat.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[valid], labels[valid].long())


def detection_loss(maps: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                   classes: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of raw maps against padded boxes/labels, and its parts (for logging)."""
    top = int(labels.max()) if labels.numel() else -1
    if top >= classes:  # one_hot would stop the run with "Class values must be smaller ..."
        raise ConfigError(f"a box of class {top} (category_id {top + 1}), but the model has "
                          f"{classes} classes (category ids 1..{classes}): set the model's "
                          f"classes or fix the annotations")
    heat, size, offset = split_maps(maps.float(), classes)
    targets = build_targets(boxes.float(), labels, classes, (heat.shape[2], heat.shape[3]))
    mask = targets.valid.unsqueeze(-1).float()
    count = mask.sum().clamp(min=1)
    heat_loss = focal_loss(heat, targets.heat)
    size_loss = ((_at_cells(size, targets.cell) - targets.size).abs() * mask).sum() / (
        count * STRIDE)
    offset_loss = ((_at_cells(offset, targets.cell) - targets.offset).abs() * mask).sum() / count
    class_loss = _center_class_loss(heat, targets, labels)
    total = (heat_loss + SIZE_WEIGHT * size_loss + OFFSET_WEIGHT * offset_loss
             + CLASS_WEIGHT * class_loss)
    parts = {"heat": float(heat_loss.detach()), "size": float(size_loss.detach()),
             "offset": float(offset_loss.detach()), "class": float(class_loss.detach())}
    return total, parts

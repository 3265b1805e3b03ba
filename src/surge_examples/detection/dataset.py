"""Detection canvases made of real Fashion-MNIST items.

Each canvas is a uint8 [size, size] image: a textured, noisy background with 1 to 6 Fashion-MNIST
items pasted at random positions and scales. An item's box is the bounding box of its own nonzero
pixels after scaling (x1, y1 inclusive; x2, y2 exclusive, so width = x2 - x1 pixels), whether or
not a later item covers part of it; placement keeps every box at most `max_covered` covered by the
other boxes, so boxes stay meaningful.

Source images never cross splits: train canvases use Fashion-MNIST's 60k training images; the 10k
test images are split once by a fixed permutation into two disjoint halves, the first for
validation canvases and the second for test canvases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from surge.errors import ConfigError
from surge_examples.fashion.data import FASHION_CLASSES, load_fashion_mnist

SPLITS = ("train", "val", "test")
# The fixed permutation seed splitting Fashion-MNIST's test images into val / test pools; it does
# not depend on the canvas seed, so every dataset built on this machine keeps the same pools.
_POOL_SEED = 20_260_101
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_PLACEMENT_TRIES = 12


@dataclass(frozen=True)
class CanvasSpec:
    """How canvases are drawn."""

    size: int = 128
    min_objects: int = 1
    max_objects: int = 6
    min_scale: int = 16  # pixels the 28x28 item is resized to
    max_scale: int = 48
    max_covered: float = 0.35  # largest fraction of a box that other boxes may cover
    texture: float = 60.0  # peak background texture intensity (of 255)
    noise: float = 10.0  # largest per-canvas Gaussian noise sigma (of 255)

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(
                f"objects per canvas {self.min_objects}..{self.max_objects}: need 1 <= min <= max"
            )
        if not 4 <= self.min_scale <= self.max_scale <= self.size:
            raise ConfigError(
                f"item scale {self.min_scale}..{self.max_scale}: need 4 <= min <= max <= size"
                f" {self.size}"
            )


@dataclass
class DetectionSplit:
    """Canvases and their objects. Per-object arrays are flat, `image_index` says which canvas."""

    images: np.ndarray  # uint8 [N, size, size]
    boxes: np.ndarray  # float32 [M, 4] x1, y1, x2, y2 pixels (x2, y2 exclusive)
    labels: np.ndarray  # int64 [M] class index 0..9
    image_index: np.ndarray  # int64 [M]
    source_index: np.ndarray  # int64 [M] index into the Fashion-MNIST split the item came from
    scale: np.ndarray  # int64 [M] side in pixels the 28x28 item was resized to
    corner: np.ndarray  # int64 [M, 2] x, y of the resized item's top-left pixel on the canvas
    source_split: str = "train"  # Fashion-MNIST split of the items: 'train' or 'test'
    classes: tuple[str, ...] = field(default=FASHION_CLASSES)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def objects_of(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [k, 4], labels [k]) of canvas `index`."""
        keep = self.image_index == index
        return self.boxes[keep], self.labels[keep]

    def head(self, count: int) -> DetectionSplit:
        """The first `count` canvases and their objects."""
        keep = self.image_index < count
        return DetectionSplit(
            self.images[:count], self.boxes[keep], self.labels[keep], self.image_index[keep],
            self.source_index[keep], self.scale[keep], self.corner[keep], self.source_split,
            self.classes)

    def padded(self, max_objects: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [N, max_objects, 4] and labels [N, max_objects] with -1 where there is none."""
        n = len(self)
        boxes = np.zeros((n, max_objects, 4), np.float32)
        labels = np.full((n, max_objects), -1, np.int64)
        order = np.argsort(self.image_index, kind="stable")
        image = self.image_index[order]
        starts = np.searchsorted(image, np.arange(n))
        slot = np.arange(len(order)) - starts[image]
        if len(slot) and slot.max() >= max_objects:
            raise ConfigError(f"a canvas holds {slot.max() + 1} objects, more than {max_objects}")
        boxes[image, slot] = self.boxes[order]
        labels[image, slot] = self.labels[order]
        return boxes, labels


def source_pool(split: str) -> tuple[str, np.ndarray]:
    """(Fashion-MNIST split, indices of its images) that canvases of `split` may use."""
    if split not in SPLITS:
        raise ConfigError(f"unknown detection split {split!r}; expected one of {', '.join(SPLITS)}")
    if split == "train":
        return "train", np.arange(60_000)
    order = np.random.default_rng(_POOL_SEED).permutation(10_000)
    return "test", np.sort(order[:5_000] if split == "val" else order[5_000:])


def _scaled_items(images: np.ndarray, scales: np.ndarray) -> list[np.ndarray]:
    """Resize each 28x28 item to its scale (antialiased bilinear), grouped by scale to vectorise."""
    out: list[np.ndarray] = [np.empty((0, 0), np.uint8)] * len(images)
    source = torch.tensor(images, dtype=torch.float32)[:, None]
    for scale in np.unique(scales):
        picked = np.flatnonzero(scales == scale)
        resized = F.interpolate(source[picked], size=(int(scale), int(scale)), mode="bilinear",
                                antialias=True, align_corners=False)
        items = resized[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
        for j, i in enumerate(picked):
            out[i] = items[j]
    return out


def _tight_boxes(items: list[np.ndarray]) -> np.ndarray:
    """[M, 4] x1, y1, x2, y2 of each item's nonzero pixels, relative to the item's corner."""
    boxes = np.zeros((len(items), 4), np.int64)
    for i, item in enumerate(items):
        rows, cols = np.flatnonzero(item.any(1)), np.flatnonzero(item.any(0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _covered_fraction(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Per row: the fraction of `box` [B, T, 4] inside each of `others` [B, K, 4], max over K."""
    x1 = np.maximum(box[:, :, None, 0], others[:, None, :, 0])
    y1 = np.maximum(box[:, :, None, 1], others[:, None, :, 1])
    x2 = np.minimum(box[:, :, None, 2], others[:, None, :, 2])
    y2 = np.minimum(box[:, :, None, 3], others[:, None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_box = ((box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1]))[:, :, None]
    area_other = ((others[..., 2] - others[..., 0]) * (others[..., 3] - others[..., 1]))[:, None]
    # Both directions: the new box must not hide an old one, nor be hidden by it.
    return np.maximum(inter / np.maximum(area_box, 1), inter / np.maximum(area_other, 1)).max(-1)


def _place(rng: np.random.Generator, spec: CanvasSpec, extent: np.ndarray,
           tight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners [N, S, 2] for items of extent [N, S] and a `placed` mask [N, S].

    Slot by slot for all canvases at once: draw several candidate corners, keep the first whose
    box overlaps the boxes placed so far by at most `max_covered`; drop the item if none does.
    """
    n, slots = extent.shape
    corners = np.zeros((n, slots, 2), np.int64)
    placed = np.zeros((n, slots), bool)
    for s in range(slots):
        room = spec.size - extent[:, s]
        cand = (rng.random((n, _PLACEMENT_TRIES, 2)) * (room[:, None, None] + 1)).astype(np.int64)
        boxes = np.concatenate([cand, cand], axis=-1) + tight[:, s, None, :]
        if s:
            prior = np.concatenate([corners[:, :s], corners[:, :s]], -1) + tight[:, :s]
            prior = np.where(placed[:, :s, None], prior, -1)  # empty boxes cover nothing
            ok = _covered_fraction(boxes, prior) <= spec.max_covered
        else:
            ok = np.ones((n, _PLACEMENT_TRIES), bool)
        first = ok.argmax(1)
        placed[:, s] = ok.any(1)
        corners[:, s] = cand[np.arange(n), first]
    return corners, placed


def _backgrounds(rng: np.random.Generator, spec: CanvasSpec, n: int) -> np.ndarray:
    """float32 [N, size, size] textures: smooth waves plus oriented stripes, in [0, texture].

    Each texture is a sum of separable terms (cos(a y + p) cos(b x + q), and sin/cos pairs for
    the stripes), so the whole batch is one batched matmul instead of per-pixel trigonometry.
    """
    axis = np.arange(spec.size, dtype=np.float32)
    waves = 3
    freq = rng.uniform(0.02, 0.25, (n, 2, waves)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 2, waves)).astype(np.float32)
    amp = rng.uniform(-1, 1, (n, waves)).astype(np.float32) / waves
    rows = np.cos(freq[:, 0, :, None] * axis + phase[:, 0, :, None]) * amp[..., None]
    cols = np.cos(freq[:, 1, :, None] * axis + phase[:, 1, :, None])
    angle = rng.uniform(0, np.pi, (n, 1)).astype(np.float32)
    omega = (2 * np.pi / rng.uniform(6, 24, (n, 1))).astype(np.float32)
    fy, fx = (omega * np.sin(angle))[..., None] * axis, (omega * np.cos(angle))[..., None] * axis
    mix = rng.random((n, 1, 1), dtype=np.float32)
    # sin(fy + fx) = sin(fy) cos(fx) + cos(fy) sin(fx)
    left = np.concatenate([rows * mix, (1 - mix) * np.sin(fy), (1 - mix) * np.cos(fy)], axis=1)
    right = np.concatenate([cols, np.cos(fx), np.sin(fx)], axis=1)
    field = np.matmul(left.transpose(0, 2, 1), right)  # in [-1, 1]
    strength = rng.uniform(0.2, 1.0, (n, 1, 1)).astype(np.float32) * (spec.texture / 2)
    return strength * (field + 1)


def _compose(rng: np.random.Generator, spec: CanvasSpec, items: np.ndarray) -> np.ndarray:
    """Items over a texture, plus Gaussian noise of a per-canvas sigma drawn from a shared bank."""
    n = len(items)
    canvas = np.where(items > 0, items.astype(np.float32), _backgrounds(rng, spec, n))
    bank = rng.standard_normal((64, spec.size, spec.size), dtype=np.float32)
    sigma = rng.uniform(0, spec.noise, (n, 1, 1)).astype(np.float32)
    canvas += sigma * bank[rng.integers(0, len(bank), n)]
    np.clip(canvas + 0.5, 0, 255, out=canvas)
    return canvas.astype(np.uint8)


def generate_split(split: str, count: int, spec: CanvasSpec | None = None, seed: int = 0,
                   images: np.ndarray | None = None, labels: np.ndarray | None = None,
                   ) -> DetectionSplit:
    """Draw `count` canvases for `split` ('train', 'val' or 'test') reproducibly from `seed`.

    `images`/`labels` default to the Fashion-MNIST split the canvas split draws from.
    """
    spec = spec or CanvasSpec()
    if count < 0:
        raise ConfigError(f"canvas count {count} must not be negative")
    source_split, pool = source_pool(split)
    if images is None or labels is None:
        images, labels = load_fashion_mnist(source_split)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    slots = spec.max_objects
    wanted = rng.integers(spec.min_objects, spec.max_objects + 1, count)
    source = pool[rng.integers(0, len(pool), (count, slots))]
    scale = rng.integers(spec.min_scale, spec.max_scale + 1, (count, slots))
    active = np.arange(slots)[None] < wanted[:, None]

    flat_items = _scaled_items(images[source[active]], scale[active])
    tight = np.zeros((count, slots, 4), np.int64)
    tight[active] = _tight_boxes(flat_items)
    extent = np.where(active, scale, 0)
    corners, placed = _place(rng, spec, extent, tight)
    placed &= active

    canvas_items = np.zeros((count, spec.size, spec.size), np.uint8)
    item_of = dict(zip(zip(*np.nonzero(active), strict=True), flat_items, strict=True))
    for n, s in zip(*np.nonzero(placed), strict=True):
        (x, y), item = corners[n, s], item_of[(n, s)]
        window = canvas_items[n, y:y + item.shape[0], x:x + item.shape[1]]
        np.maximum(window, item, out=window)

    chunk = 1024  # bounded float32 working memory
    canvases = np.concatenate([
        _compose(rng, spec, canvas_items[i:i + chunk]) for i in range(0, max(count, 1), chunk)
    ]) if count else canvas_items
    n_idx, s_idx = np.nonzero(placed)
    xy = np.concatenate([corners, corners], -1)
    return DetectionSplit(
        images=canvases,
        boxes=(xy + tight)[n_idx, s_idx].astype(np.float32),
        labels=labels[source[n_idx, s_idx]].astype(np.int64),
        image_index=n_idx.astype(np.int64),
        source_index=source[n_idx, s_idx].astype(np.int64),
        scale=scale[n_idx, s_idx].astype(np.int64),
        corner=corners[n_idx, s_idx].astype(np.int64),
        source_split=source_split,
    )


def render_item(image: np.ndarray, scale: int) -> np.ndarray:
    """One 28x28 item resized to `scale` exactly as the generator does it (for checks)."""
    return _scaled_items(image[None], np.array([scale]))[0]

"""COCO-style boxes: split directories, packed training targets and results-format detections.

A split directory holds `images.npy` (uint8 [N, H, W]; COCO image id i is row i - 1) and
`annotations.json` (COCO: boxes [x, y, width, height] in pixels, category id = class + 1).
For training, a canvas's boxes are packed as float32 [M, 5] rows (x1, y1, x2, y2, class; class
-1 marking padding), so targets batch, shard and pipeline exactly like class labels do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from surge.errors import ConfigError
from surge.evaluate.metrics import MetricError
from surge.tasks.coco_metrics import box_problem, is_whole
from surge.tasks.data import DataOptions, Dataset, EvalDataset, Split, limit

if TYPE_CHECKING:
    import torch

IMAGES_FILE = "images.npy"
ANNOTATIONS_FILE = "annotations.json"
TRAIN_SPLIT, VALIDATION_SPLIT = "train", "val"


def categories(classes: tuple[str, ...] | list[str],
               supercategory: str = "object") -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": name, "supercategory": supercategory}
            for i, name in enumerate(classes)]


def detections_to_coco(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       image_ids: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Model outputs (boxes [N, K, 4] x1y1x2y2, scores [N, K], labels [N, K]) as COCO results.

    Image ids default to row + 1, matching split directories. Padding rows (score <= 0) are
    skipped.
    """
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or boxes.shape != (*scores.shape, 4) or labels.shape != scores.shape:
        raise MetricError(f"detection outputs must be boxes [N, K, 4], scores and labels [N, K]; "
                          f"got {list(boxes.shape)}, {list(scores.shape)}, {list(labels.shape)}")
    n, _ = scores.shape
    ids = np.arange(1, n + 1) if image_ids is None else np.asarray(image_ids)
    if ids.shape != (n,):
        raise MetricError(f"{n} rows of detections but {ids.size} image ids")
    rows, cols = np.nonzero(scores > 0)
    picked = boxes[rows, cols]
    classes = labels[rows, cols]
    if classes.dtype.kind not in "iu" and not (
            classes.dtype.kind == "f" and np.isfinite(classes).all()
            and (classes == np.round(classes)).all()):
        raise MetricError(f"detection labels must be whole class ids, got {labels.dtype} values "
                          f"such as {classes[:3].tolist()}")
    xywh = np.concatenate([picked[:, :2], picked[:, 2:] - picked[:, :2]], axis=1)
    return [
        {"image_id": int(ids[r]), "category_id": int(classes[j]) + 1,
         "bbox": [float(v) for v in xywh[j]], "score": float(scores[r, c])}
        for j, (r, c) in enumerate(zip(rows, cols, strict=True))
    ]


# -- packed targets ------------------------------------------------------------------------------
def pack_targets(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """boxes [N, M, 4] and labels [N, M] -> targets [N, M, 5]."""
    import torch

    return torch.cat([boxes.float(), labels.float().unsqueeze(-1)], dim=-1)


def unpack_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """targets [N, M, 5] -> boxes [N, M, 4], labels [N, M] int64 (-1 = padding)."""
    return targets[..., :4], targets[..., 4].round().long()


def hflip(images: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor]:
    """Mirror the images [N, H, W] where `mask` is set, and their boxes with them."""
    import torch

    width = images.shape[-1]
    flipped = targets.clone()
    flipped[..., 0] = width - targets[..., 2]
    flipped[..., 2] = width - targets[..., 0]
    images = torch.where(mask[:, None, None], images.flip(-1), images)
    return images, torch.where(mask[:, None, None], flipped, targets)


def truth_from_targets(shape: tuple[int, ...], targets: torch.Tensor,
                       class_names: list[str]) -> dict[str, Any]:
    """COCO ground truth of packed targets [N, M, 5] for images of `shape` [N, H, W]."""
    import torch

    n, height, width = shape[:3]
    boxes, labels = unpack_targets(targets)
    images = [{"id": i + 1, "width": width, "height": height} for i in range(n)]
    annotations: list[dict[str, Any]] = []
    for image, slot in zip(*torch.nonzero(labels >= 0, as_tuple=True), strict=True):
        x1, y1, x2, y2 = (float(v) for v in boxes[image, slot])
        annotations.append({
            "id": len(annotations) + 1, "image_id": int(image) + 1,
            "category_id": int(labels[image, slot]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
        })
    return {"images": images, "annotations": annotations, "categories": categories(class_names)}


def packed_targets(ground_truth: dict[str, Any], count: int,
                   max_objects: int | None = None) -> np.ndarray:
    """float32 [count, M, 5] targets of images 1..count (M: the most boxes on one image)."""
    anns = [a for a in ground_truth["annotations"] if a["image_id"] <= count]
    rows = np.array([a["image_id"] - 1 for a in anns], np.int64)
    per_image = np.bincount(rows, minlength=count) if len(rows) else np.zeros(count, np.int64)
    slots = max_objects or max(int(per_image.max(initial=0)), 1)
    if per_image.max(initial=0) > slots:
        raise ConfigError(f"an image holds {per_image.max()} boxes, more than {slots}")
    targets = np.zeros((count, slots, 5), np.float32)
    targets[..., 4] = -1
    filled = np.zeros(count, np.int64)
    for row, ann in zip(rows, anns, strict=True):
        x, y, w, h = ann["bbox"]
        targets[row, filled[row]] = (x, y, x + w, y + h, ann["category_id"] - 1)
        filled[row] += 1
    return targets


# -- split directories ---------------------------------------------------------------------------
def read_split(directory: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(images [N, H, W], COCO ground truth) of a split directory, its boxes checked."""
    directory = Path(directory)
    images_file, annotations_file = directory / IMAGES_FILE, directory / ANNOTATIONS_FILE
    if not images_file.is_file() or not annotations_file.is_file():
        raise ConfigError(f"{directory}: a split directory needs {IMAGES_FILE} and "
                          f"{ANNOTATIONS_FILE}")
    try:
        images = np.load(images_file, allow_pickle=False)
        ground_truth = json.loads(annotations_file.read_text())
    except (OSError, ValueError) as exc:  # JSON and .npy format errors are ValueErrors
        raise ConfigError(f"{directory}: cannot read the split ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None
    if not isinstance(images, np.ndarray) or images.ndim != 3 or images.dtype.kind not in "uif":
        shape = list(images.shape) if isinstance(images, np.ndarray) else type(images).__name__
        raise ConfigError(f"{images_file}: images must be numbers [N, H, W] (one gray channel), "
                          f"got {shape}")
    check_annotations(ground_truth, images.shape, annotations_file)
    return images, ground_truth


def check_annotations(ground_truth: Any, shape: tuple[int, ...], where: Path) -> None:
    """Refuse the boxes training and scoring cannot use: a NaN box stops training with an index
    error, a category id out of range with a one-hot error; an empty or inverted box, or one
    off the image, trains on a center and size that are not the object's."""
    if not isinstance(ground_truth, dict) or not isinstance(ground_truth.get("annotations"), list):
        raise ConfigError(f"{where}: COCO JSON needs an 'annotations' list")
    listed = ground_truth.get("categories")
    if listed is not None and not (isinstance(listed, list) and all(
            isinstance(c, dict) and is_whole(c.get("id")) for c in listed)):
        raise ConfigError(f"{where}: COCO 'categories' must be a list of objects with an "
                          "integer 'id'")
    categories = None if listed is None else {c["id"] for c in listed}
    for index, ann in enumerate(ground_truth["annotations"]):
        if not isinstance(ann, dict):
            raise ConfigError(f"{where}: annotation {index} is not an object")
        problem = _annotation_problem(ann, shape, categories)
        if problem is not None:
            raise ConfigError(f"{where}: annotation {index} (id {ann.get('id')!r}): {problem}")


def _annotation_problem(ann: dict[str, Any], shape: tuple[int, ...],
                        categories: set[Any] | None) -> str | None:
    count, height, width = shape[:3]
    bbox: Any = ann.get("bbox")
    image: Any = ann.get("image_id")
    category: Any = ann.get("category_id")
    problem = box_problem(bbox)
    if problem is None:
        x, y, w, h = bbox
        # a pixel of slack: boxes written as floats may end a rounding error past the edge
        if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
            problem = f"reaches outside the {width}x{height} image"
    if problem is not None:
        return f"bbox {bbox!r} {problem}"
    if not (is_whole(image) and 1 <= image <= count):
        return f"image_id {image!r} is not one of the images 1..{count} ({IMAGES_FILE} rows)"
    if not (is_whole(category) and category >= 1 and (
            categories is None or category in categories)):
        return f"category_id {category!r} is not one of the 'categories' ids"
    return None


def class_names(ground_truth: dict[str, Any]) -> list[str]:
    return [c["name"] for c in sorted(ground_truth.get("categories", []), key=lambda c: c["id"])]


def split_tensors(directory: Path, size: int | None = None) -> Split:
    """A split directory as images uint8 [N, H, W] and packed targets [N, M, 5]."""
    import torch

    images, ground_truth = read_split(directory)
    targets = packed_targets(ground_truth, len(images))
    return limit(Split(torch.from_numpy(images), torch.from_numpy(targets)), size)


def split_evaluation(directory: Path, input_name: str) -> EvalDataset:
    """A split directory as an evaluation set: row i is COCO image id i + 1."""
    images, ground_truth = read_split(directory)
    return EvalDataset(Path(directory).name, {input_name: images},
                       class_names=class_names(ground_truth) or None,
                       ground_truth=ground_truth, image_ids=np.arange(1, len(images) + 1))


class CocoSplits(Dataset):
    """`root/train` and `root/val` split directories (evaluation: `root/val`, or `root` itself
    when it is a split directory)."""

    name = "coco"
    hint = "expected train/ and val/ split directories"

    def check(self, options: DataOptions) -> None:
        root = self._root(options)
        for split in (TRAIN_SPLIT, VALIDATION_SPLIT):
            if not (root / split / IMAGES_FILE).is_file():
                raise ConfigError(f"{root / split}: no split directory ({self.hint})")

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        self.check(options)
        root = self._root(options)
        train = split_tensors(root / TRAIN_SPLIT, options.train_size)
        val = split_tensors(root / VALIDATION_SPLIT, options.test_size)
        if not bool((val.labels[..., 4] >= 0).any()):
            # COCO mAP@0.5, the validation metric, is undefined: said now, not after an epoch
            raise ConfigError(f"{root / VALIDATION_SPLIT}: the validation canvases hold no boxes "
                              f"(of {len(val)} images read), so mAP@0.5 cannot be computed")
        return train, val

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        root = self._root(options)
        directory = root if (root / IMAGES_FILE).is_file() else root / VALIDATION_SPLIT
        return split_evaluation(directory, input_name)

    def _root(self, options: DataOptions) -> Path:
        if options.root is None:
            raise ConfigError(f"dataset {self.name!r} needs data.root: the directory holding "
                              "train/ and val/")
        return Path(options.root)


class SplitDirectory(Dataset):
    """One split directory given by its path (an evaluation set)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = self.path.name

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        return split_evaluation(self.path, input_name)

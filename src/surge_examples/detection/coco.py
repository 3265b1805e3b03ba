"""Canvas splits as COCO split directories (`images.npy` + `annotations.json`, the format of
`surge.tasks.coco`), plus what the canvases record about how they were made.

`images.npy` is uint8 [N, H, W]; image `id` i (1-based) is row i - 1, named `images.npy#<row>`.
Boxes are COCO [x, y, width, height] in pixels; category ids are class index + 1. Each annotation
also records how it was made (`source_split`, `source_index`, `scale`, `corner`), which COCO tools
ignore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from surge.errors import ConfigError
from surge.tasks.coco import ANNOTATIONS_FILE, IMAGES_FILE, categories
from surge_examples.detection.dataset import DetectionSplit


def to_coco(split: DetectionSplit) -> dict[str, Any]:
    """The split's COCO dataset dict (images, annotations, categories)."""
    n, height, width = split.images.shape
    images = [{"id": i + 1, "file_name": f"{IMAGES_FILE}#{i}", "width": width, "height": height}
              for i in range(n)]
    xywh = np.concatenate([split.boxes[:, :2], split.boxes[:, 2:] - split.boxes[:, :2]], axis=1)
    annotations = [
        {
            "id": j + 1, "image_id": int(split.image_index[j]) + 1,
            "category_id": int(split.labels[j]) + 1, "bbox": [float(v) for v in xywh[j]],
            "area": float(xywh[j, 2] * xywh[j, 3]), "iscrowd": 0,
            "source_split": split.source_split, "source_index": int(split.source_index[j]),
            "scale": int(split.scale[j]), "corner": [int(v) for v in split.corner[j]],
        }
        for j in range(len(split.labels))
    ]
    return {
        "info": {"description": "Fashion-MNIST detection canvases", "version": "1"},
        "images": images, "annotations": annotations,
        "categories": categories(split.classes, "fashion"),
    }


def save_split(split: DetectionSplit, directory: Path) -> Path:
    """Write `images.npy` and `annotations.json` into `directory`; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / IMAGES_FILE, split.images)
    (directory / ANNOTATIONS_FILE).write_text(json.dumps(to_coco(split)))
    return directory


def load_split(directory: Path) -> DetectionSplit:
    """Read a split directory written by `save_split`."""
    directory = Path(directory)
    for name in (IMAGES_FILE, ANNOTATIONS_FILE):
        if not (directory / name).is_file():
            raise ConfigError(f"{directory / name} not found: not a detection split directory")
    images = np.load(directory / IMAGES_FILE, allow_pickle=False)
    data = json.loads((directory / ANNOTATIONS_FILE).read_text())
    anns = data["annotations"]
    xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    classes = tuple(c["name"] for c in sorted(data["categories"], key=lambda c: c["id"]))
    return DetectionSplit(
        images=images,
        boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
        labels=np.array([a["category_id"] - 1 for a in anns], np.int64),
        image_index=np.array([a["image_id"] - 1 for a in anns], np.int64),
        source_index=np.array([a.get("source_index", -1) for a in anns], np.int64),
        scale=np.array([a.get("scale", 0) for a in anns], np.int64),
        corner=np.array([a.get("corner", [0, 0]) for a in anns], np.int64).reshape(-1, 2),
        source_split=anns[0].get("source_split", "") if anns else "",
        classes=classes,
    )


def save_eval_archive(split: DetectionSplit, path: Path, input_name: str = "image") -> Path:
    """`path` (.npz: the model input and COCO `image_ids`) plus the ground truth beside it (.json).

    This is the detection dataset format `surge tune --data` and `surge.evaluate` read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.arange(1, len(split) + 1, dtype=np.int64)
    arrays: dict[str, Any] = {input_name: split.images, "image_ids": ids}
    np.savez(path, **arrays)
    path.with_suffix(".json").write_text(json.dumps(to_coco(split)))
    return path

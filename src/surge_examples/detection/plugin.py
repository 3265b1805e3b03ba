"""Registers the canvases and CenterNet with the library (entry point group `surge.plugins`)."""

from __future__ import annotations

from surge.tasks import Registry
from surge.tasks.coco import CocoSplits

DATASET = "fashion-detection"


class FashionCanvases(CocoSplits):
    """The train/ and val/ split directories `surge data fashion-detection ROOT` writes."""

    name = DATASET
    hint = "run `surge data fashion-detection ROOT` first"


def register(registry: Registry) -> None:
    registry.add_dataset(DATASET, FashionCanvases)
    registry.add_model("centernet", "surge_examples.detection.model:centernet")
    registry.add_model("detector", "surge_examples.detection.model:detector")

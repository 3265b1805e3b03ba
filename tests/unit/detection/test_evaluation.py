"""Model outputs -> COCO results -> mAP and P/R/F1: perfect is 1.0, nothing is 0."""

from __future__ import annotations

import numpy as np
import pytest

from surge.tasks.coco import detections_to_coco
from surge.tasks.coco_metrics import coco_map, detection_prf
from surge_examples.detection.coco import to_coco
from surge_examples.detection.dataset import DetectionSplit, generate_split

K = 8


@pytest.fixture(scope="module")
def split() -> DetectionSplit:
    return generate_split("val", 25, seed=4)


def _outputs(split: DetectionSplit, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    """Fixed-size outputs holding the ground truth (optionally shifted), zero-score padding."""
    boxes = np.zeros((len(split), K, 4), np.float32)
    scores = np.zeros((len(split), K), np.float32)
    labels = np.zeros((len(split), K), np.int64)
    for index in range(len(split)):
        own_boxes, own_labels = split.objects_of(index)
        count = len(own_labels)
        boxes[index, :count] = own_boxes + shift
        scores[index, :count] = np.linspace(0.9, 0.5, count)
        labels[index, :count] = own_labels
    return boxes, scores, labels


def test_perfect_predictions_score_map_1(split: DetectionSplit) -> None:
    truth = to_coco(split)
    detections = detections_to_coco(*_outputs(split))
    assert len(detections) == len(split.labels)  # zero-score padding is not reported
    report = coco_map(truth, detections)
    assert report.map50 == pytest.approx(1.0)
    assert report.map == pytest.approx(1.0)
    prf = detection_prf(truth, detections, score_threshold=0.3)
    assert (prf.precision, prf.recall, prf.f1) == (1.0, 1.0, 1.0)


def test_empty_predictions_score_0(split: DetectionSplit) -> None:
    boxes, scores, labels = _outputs(split)
    detections = detections_to_coco(boxes, np.zeros_like(scores), labels)
    assert detections == []
    report = coco_map(to_coco(split), detections)
    assert report.map50 == 0.0
    assert report.map == 0.0


def test_boxes_shifted_off_their_items_miss(split: DetectionSplit) -> None:
    report = coco_map(to_coco(split), detections_to_coco(*_outputs(split, shift=60.0)))
    assert report.map50 < 0.1


def test_detections_use_coco_ids_and_xywh() -> None:
    boxes = np.array([[[10, 20, 40, 60], [0, 0, 0, 0]]], np.float32)
    scores = np.array([[0.8, 0.0]], np.float32)
    labels = np.array([[4, 0]], np.int64)
    assert detections_to_coco(boxes, scores, labels, np.array([7])) == [
        {"image_id": 7, "category_id": 5, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.800000011920929}]

"""COCO mAP and P/R/F1 on inputs that used to score silently wrong or stop with a traceback:
NaN boxes and scores from a model, ground truth pycocotools drops without a word, malformed
detections and thresholds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from surge.evaluate.metrics import MetricError
from surge.tasks.coco import detections_to_coco
from surge.tasks.coco_metrics import best_f1_threshold, coco_map, detection_prf

NAN = float("nan")


def _truth(annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"images": [{"id": 1, "width": 128, "height": 128},
                       {"id": 2, "width": 128, "height": 128}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": annotations if annotations is not None else [
                {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}]}


def _det(**changes: Any) -> dict[str, Any]:
    return {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9, **changes}


def test_a_nan_box_is_a_miss_not_a_match_of_every_box() -> None:
    # pycocotools matched a NaN box to the ground truth: mAP 1.0 for a model answering NaN.
    assert coco_map(_truth(), [_det(bbox=[NAN] * 4)]).map50 == 0.0
    assert detection_prf(_truth(), [_det(bbox=[NAN, 10, 20, 20])], 0.5).true_positives == 0
    # the same through the task's decoding of model outputs
    outputs = (np.full((2, 1, 4), np.nan, np.float32), np.full((2, 1), 0.9, np.float32),
               np.zeros((2, 1), np.int64))
    report = coco_map(_truth(), detections_to_coco(*outputs))
    assert (report.map50, report.detections) == (0.0, 2)


def test_a_nan_score_is_no_detection() -> None:
    # it ranked as a detection (mAP 1.0); detections_to_coco already skips it
    assert coco_map(_truth(), [_det(score=NAN)]).map50 == 0.0
    assert detection_prf(_truth(), [_det(score=NAN)], 0.0).false_positives == 0
    best = best_f1_threshold(_truth(), [_det(score=NAN), _det(score=0.4)])
    assert best.score_threshold == pytest.approx(0.4)  # was NaN: every score passes NaN


@pytest.mark.parametrize(("annotation", "message"), [
    # scored 0.0: pycocotools dropped these annotations without a word
    ({"image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]}, "image_id 9 is not one of"),
    ({"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}, "category_id 7 is not one of"),
    ({"image_id": 1, "category_id": 1, "bbox": [NAN, 1, 5, 5]}, "holds NaN or infinity"),
    ({"image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]}, "has no area"),
    ({"image_id": 1, "category_id": 1, "bbox": [9, 9, -5, -5]}, "has no area"),
    # tracebacks: ValueError, KeyError
    ({"image_id": 1, "category_id": 1, "bbox": ["a", 1, 5, 5]}, "is not four numbers"),
    ({"category_id": 1, "bbox": [1, 1, 5, 5]}, "image_id None is not one of"),
    ({"image_id": 1, "category_id": True, "bbox": [1, 1, 5, 5]}, "category_id True"),
])
def test_ground_truth_it_cannot_score_is_refused(annotation: dict[str, Any],
                                                 message: str) -> None:
    for score in (lambda t: coco_map(t, [_det()]), lambda t: detection_prf(t, [_det()])):
        with pytest.raises(MetricError, match=message):
            score(_truth([annotation]))


@pytest.mark.parametrize("detection", [
    _det(score="0.9"), _det(bbox=[1, 2, 3]), _det(bbox="10 10 20 20"), _det(category_id=1.5),
    _det(score=None), "not a detection",
])
def test_malformed_detections_are_refused(detection: Any) -> None:
    for score in (coco_map, detection_prf):
        with pytest.raises(MetricError, match="detection 0"):
            score(_truth(), [detection])


@pytest.mark.parametrize(("threshold", "iou"), [(NAN, 0.5), ("0.5", 0.5), (0.5, 2.0),
                                                (0.5, 0.0), (0.5, NAN)])
def test_thresholds_that_match_nothing_or_everything_are_refused(threshold: Any,
                                                                 iou: Any) -> None:
    # NaN kept every detection (F1 1.0 at "threshold nan"); IoU 2 matched none
    with pytest.raises(MetricError, match="threshold must be a number"):
        detection_prf(_truth(), [_det()], threshold, iou)


@pytest.mark.parametrize(("boxes", "scores", "labels", "ids"), [
    ((2, 4), (2,), (2,), None),  # one box per image: ValueError
    ((2, 3, 4), (2, 5), (2, 5), None),  # IndexError
    ((2, 3, 5), (2, 3), (2, 3), None),  # a fifth column was dropped silently
    ((2, 3, 4), (2, 3), (2, 3), [1]),  # fewer image ids than rows: IndexError
])
def test_outputs_of_the_wrong_shape_are_refused(boxes: tuple[int, ...], scores: tuple[int, ...],
                                                labels: tuple[int, ...],
                                                ids: list[int] | None) -> None:
    with pytest.raises(MetricError, match="rows of detections|must be boxes"):
        detections_to_coco(np.zeros(boxes, np.float32), np.ones(scores, np.float32),
                           np.zeros(labels, np.int64), None if ids is None else np.array(ids))


def test_labels_that_are_not_class_ids_are_refused() -> None:
    with pytest.raises(MetricError, match="whole class ids"):  # int(NaN): ValueError
        detections_to_coco(np.zeros((1, 1, 4)), np.ones((1, 1)), np.full((1, 1), np.nan))


def test_numpy_numbers_in_detections_still_score() -> None:
    # a decoder may hand numpy scalars: they are numbers, not refused
    det = _det(image_id=np.int64(1), category_id=np.int64(1), score=np.float32(0.8),
               bbox=[np.float32(10), 10, 20, 20])
    assert coco_map(_truth(), [det]).map50 == pytest.approx(1.0)

"""Metrics against values computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surge.evaluate.metrics import (
    MetricError,
    accuracy,
    classification_report,
    embedding_fidelity,
    latency_percentiles,
    report_dict,
    top_k_accuracy,
)
from surge.tasks.coco_metrics import best_f1_threshold, coco_map, detection_prf

# -- classification ----------------------------------------------------------------------------
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
PREDS = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0, 1])


def test_accuracy_counts_matches() -> None:
    assert accuracy(LABELS, PREDS) == pytest.approx(6 / 10)


@pytest.mark.parametrize(("labels", "message"), [
    ([0, 1, 3], r"label 3 is out of range: the model scores class ids 0 to 2"),
    ([0, -1, 2], r"label -1 is out of range"),
    ([0.0, 0.5, 2.0], r"labels must be whole class ids, got float64 values such as 0\.5"),
    ([0.0, np.nan, 2.0], r"labels must be whole class ids, got float64 values such as nan"),
    ([], r"no samples to score"),
])
def test_classification_refuses_labels_that_are_not_class_ids_of_the_model(
        labels: list[float], message: str) -> None:
    """They were scored anyway: 3 of a 3-class model counted as a miss, 0.5 as class 0, NaN as a
    huge id; -1 and no labels at all raised from inside scikit-learn."""
    scores = np.eye(3, dtype=np.float32)[: len(labels)]
    with pytest.raises(MetricError, match=message):
        classification_report(np.array(labels), scores)


def test_classification_takes_whole_float_labels() -> None:
    report = classification_report(np.array([0.0, 1.0, 2.0]), np.eye(3, dtype=np.float32))
    assert report.accuracy == 1.0


def test_confusion_matrix_and_per_class_by_hand() -> None:
    report = classification_report(LABELS, PREDS, class_names=["a", "b", "c"])
    # rows: true class, columns: predicted class
    assert report.confusion == [[2, 1, 0], [0, 1, 1], [1, 1, 3]]
    a, b, c = report.per_class
    # a: tp 2, predicted 3, actual 3 -> P 2/3, R 2/3
    assert (a.precision, a.recall, a.support) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    # b: tp 1, predicted 3, actual 2 -> P 1/3, R 1/2, F1 = 2PR/(P+R) = 0.4
    assert (b.precision, b.recall, b.f1) == (pytest.approx(1 / 3), 0.5, pytest.approx(0.4))
    # c: tp 3, predicted 4, actual 5 -> P 3/4, R 3/5
    assert (c.precision, c.recall) == (pytest.approx(0.75), pytest.approx(0.6))
    assert report.macro_precision == pytest.approx((2 / 3 + 1 / 3 + 0.75) / 3)
    assert report.macro_recall == pytest.approx((2 / 3 + 0.5 + 0.6) / 3)
    assert report.accuracy == pytest.approx(0.6)
    assert report.headline == pytest.approx(60.0)


def test_macro_average_skips_classes_absent_from_labels() -> None:
    # class 2 never occurs in the labels: it must not drag the macro recall down to 2/3
    report = classification_report(np.array([0, 1]), np.array([0, 1]), class_names=["a", "b", "c"])
    assert report.macro_recall == 1.0
    assert report.confusion == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_top_k_from_scores() -> None:
    scores = np.array([
        [0.1, 0.5, 0.4],  # label 2: second best
        [0.7, 0.2, 0.1],  # label 0: best
        [0.6, 0.3, 0.1],  # label 2: worst
    ])
    labels = np.array([2, 0, 2])
    assert top_k_accuracy(labels, scores, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(labels, scores, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(labels, scores, 3) == 1.0
    report = classification_report(labels, scores, top_k=(1, 2, 5))
    assert report.top_k == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(MetricError, match="3 predictions for 2 labels"):
        accuracy(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(MetricError, match="k=4"):
        top_k_accuracy(np.array([0]), np.array([[0.1, 0.2, 0.7]]), 4)


def test_reports_serialize_to_json() -> None:
    data = report_dict(classification_report(LABELS, PREDS))
    assert json.loads(json.dumps(data))["confusion"][2] == [1, 1, 3]


# -- detection ---------------------------------------------------------------------------------
def _ground_truth() -> dict:
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"image_id": 1, "category_id": 2, "bbox": [50, 50, 30, 30]},
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40]},
        ],
    }


def _perfect() -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in _ground_truth()["annotations"]]


def test_coco_perfect_predictions_score_one() -> None:
    report = coco_map(_ground_truth(), _perfect())
    assert report.map == pytest.approx(1.0)
    assert report.map50 == pytest.approx(1.0)
    assert report.per_class_ap50 == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_coco_no_detections_score_zero() -> None:
    report = coco_map(_ground_truth(), [])
    assert (report.map, report.map50, report.map75) == (0.0, 0.0, 0.0)
    assert report.per_class_ap50 == {"cat": 0.0, "dog": 0.0}


def test_coco_partial_case_by_hand() -> None:
    # cats found exactly; the dog box is missed (a dog predicted far away).
    # cat AP = 1 at every IoU, dog AP = 0 -> mAP = (1 + 0) / 2 = 0.5.
    dets = _perfect()[:1] + _perfect()[2:] + [
        {"image_id": 1, "category_id": 2, "bbox": [0, 60, 10, 10], "score": 0.8}]
    report = coco_map(_ground_truth(), dets)
    assert report.map == pytest.approx(0.5)
    assert report.per_class_ap50 == {"cat": pytest.approx(1.0), "dog": 0.0}


def test_coco_iou_between_thresholds_by_hand() -> None:
    # One box shifted: gt [0,0,40,40], det [0,0,40,30] -> IoU 1200/1600 = 0.75.
    # It counts at IoU 0.50..0.75 (6 of 10 thresholds) -> AP 0.6, AP50 1, AP75 1.
    gt = _ground_truth()
    gt["annotations"] = gt["annotations"][2:]
    det = [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 30], "score": 0.5}]
    report = coco_map(gt, det)
    assert (report.map, report.map50, report.map75) == (
        pytest.approx(0.6), pytest.approx(1.0), pytest.approx(1.0))


def test_coco_rejects_unknown_image() -> None:
    with pytest.raises(MetricError, match="image_id 7"):
        coco_map(_ground_truth(), [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1],
                                    "score": 1.0}])


def test_detection_prf_at_threshold_by_hand() -> None:
    dets = _perfect() + [
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.3},  # false positive
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 30, 30], "score": 0.2},  # duplicate
    ]
    all_dets = detection_prf(_ground_truth(), dets, score_threshold=0.0)
    # 5 detections, 3 matched (the duplicate cannot match a used box) -> P 3/5, R 3/3
    counts = (all_dets.true_positives, all_dets.false_positives, all_dets.false_negatives)
    assert counts == (3, 2, 0)
    assert all_dets.precision == pytest.approx(0.6)
    assert all_dets.f1 == pytest.approx(0.75)
    high = detection_prf(_ground_truth(), dets, score_threshold=0.5)
    assert (high.precision, high.recall, high.f1) == (1.0, 1.0, 1.0)


def test_detection_prf_needs_same_class_and_iou() -> None:
    wrong_class = [dict(d, category_id=3 - d["category_id"]) for d in _perfect()]
    assert detection_prf(_ground_truth(), wrong_class, 0.0).true_positives == 0
    gt = _ground_truth()
    # IoU 0.75 matches at 0.5 but not at 0.8
    det = [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 30], "score": 0.5}]
    assert detection_prf(gt, det, 0.0, iou=0.5).true_positives == 1
    assert detection_prf(gt, det, 0.0, iou=0.8).true_positives == 0


def test_best_f1_threshold_picks_the_maximum() -> None:
    dets = _perfect() + [
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.3},
        {"image_id": 2, "category_id": 2, "bbox": [50, 0, 5, 5], "score": 0.95},  # confident FP
    ]
    best = best_f1_threshold(_ground_truth(), dets)
    # >= 0.3: P 3/5 ... >= 0.9: P 3/4, R 1 -> F1 6/7; >= 0.95: only the FP -> F1 0
    assert best.score_threshold == pytest.approx(0.9)
    assert best.f1 == pytest.approx(6 / 7)


# -- embeddings and latency --------------------------------------------------------------------
def test_embedding_fidelity_by_hand() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 2.0]])
    candidate = np.array([[1.0, 1.0], [0.0, 5.0]])  # 45 degrees off; same direction
    report = embedding_fidelity(reference, candidate)
    assert report.min_cosine == pytest.approx(np.sqrt(0.5))
    assert report.mean_cosine == pytest.approx((np.sqrt(0.5) + 1.0) / 2)
    with pytest.raises(MetricError, match="shapes differ"):
        embedding_fidelity(reference, candidate[:1])


def test_latency_percentiles_in_ms() -> None:
    report = latency_percentiles(np.arange(1, 101) / 1000.0)  # 1..100 ms
    assert report.count == 100
    assert report.p50_ms == pytest.approx(50.5)
    assert report.p99_ms == pytest.approx(99.01)
    assert report.max_ms == pytest.approx(100.0)
    with pytest.raises(MetricError):
        latency_percentiles([])

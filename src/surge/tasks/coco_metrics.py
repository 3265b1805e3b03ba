"""Box metrics as pure functions over COCO dicts: COCO mAP through pycocotools' COCOeval (the
definitions of averaging, interpolation and crowd handling the field reports), and precision,
recall and F1 at a score threshold."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surge.evaluate.metrics import MetricError


# -- detection: COCO mAP -----------------------------------------------------------------------
@dataclass(frozen=True)
class CocoReport:
    """COCO box mAP (IoU 0.50:0.95), mAP at IoU 0.50 and 0.75, and AP50 per category name."""

    map: float
    map50: float
    map75: float
    per_class_ap50: dict[str, float]
    images: int
    detections: int
    stats: list[float] = field(default_factory=list)  # COCOeval's 12 summary numbers

    @property
    def headline(self) -> float:
        """mAP in percent: the default headline (`surge.evaluate.harness.METRICS`)."""
        return 100.0 * self.map


def is_real(value: Any) -> bool:
    """A plain number (numpy's too), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def box_problem(bbox: Any) -> str | None:
    """Why a COCO [x, y, width, height] box cannot be ground truth, or None when it can."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(map(is_real, bbox)):
        return "is not four numbers [x, y, width, height]"
    if not all(math.isfinite(v) for v in bbox):
        return "holds NaN or infinity"
    if not (bbox[2] > 0 and bbox[3] > 0):
        return "has no area (width and height must be > 0): no detection can ever match it"
    return None


def _ids(data: dict[str, Any], key: str) -> set[Any]:
    entries = data[key]
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and is_whole(e.get("id")) for e in entries):
        raise MetricError(f"COCO ground truth {key!r} must be a list of objects with an "
                          "integer 'id'")
    return {e["id"] for e in entries}


def _check_annotation(index: int, ann: Any, images: set[Any], categories: set[Any]) -> None:
    # pycocotools takes a NaN box for a match of anything, and drops an annotation of an
    # unknown image or category without a word: either would change mAP silently.
    if not isinstance(ann, dict):
        raise MetricError(f"ground-truth annotation {index} is not an object")
    problem = box_problem(ann.get("bbox"))
    if problem:
        raise MetricError(f"ground-truth annotation {index}: bbox {ann.get('bbox')!r} {problem}")
    for key, known in (("image_id", images), ("category_id", categories)):
        value = ann.get(key)
        if not is_whole(value) or value not in known:
            raise MetricError(f"ground-truth annotation {index}: {key} {value!r} is not one of "
                              f"the ground truth's {key.removesuffix('_id')} ids")


def _normalized_ground_truth(ground_truth: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(ground_truth, dict):
        raise MetricError("COCO ground truth must be an object with images, annotations and "
                          "categories")
    for key in ("images", "annotations", "categories"):
        if key not in ground_truth:
            raise MetricError(f"COCO ground truth has no {key!r} list")
    images, categories = _ids(ground_truth, "images"), _ids(ground_truth, "categories")
    if not isinstance(ground_truth["annotations"], list):
        raise MetricError("COCO ground truth 'annotations' must be a list")
    for index, ann in enumerate(ground_truth["annotations"]):
        _check_annotation(index, ann, images, categories)
    data = copy.deepcopy(ground_truth)
    for index, ann in enumerate(data["annotations"]):
        ann.setdefault("id", index + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    return data


def _coco_objects(data: dict[str, Any]) -> Any:
    """pycocotools' COCO of normalized ground truth."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def usable_detections(detections: list[dict[str, Any]],
                      image_ids: set[Any]) -> list[dict[str, Any]]:
    """Checked copies of COCO results: a NaN score ranks nowhere, so it is no detection (as in
    `detections_to_coco`); a box with NaN or infinite corners can only be a miss, so it becomes
    one that overlaps nothing (pycocotools would match it to every box)."""
    usable: list[dict[str, Any]] = []
    for index, det in enumerate(detections):
        missing = [k for k in ("image_id", "category_id", "bbox", "score")
                   if not isinstance(det, dict) or k not in det]
        if missing:
            raise MetricError(f"detection {index} lacks {missing} (COCO results format)")
        if det["image_id"] not in image_ids:
            raise MetricError(f"detection {index} names image_id {det['image_id']} not in the "
                              "ground truth")
        bbox, score = det["bbox"], det["score"]
        if not is_real(score) or not is_whole(det["category_id"]) or not isinstance(
                bbox, list | tuple) or len(bbox) != 4 or not all(map(is_real, bbox)):
            raise MetricError(f"detection {index} needs a number 'score', a whole "
                              f"'category_id' and 'bbox' [x, y, w, h] numbers, got {det!r}")
        if math.isnan(score):
            continue
        box = [float(v) for v in bbox]
        usable.append({**det, "score": float(score),
                       "bbox": box if all(map(math.isfinite, box)) else [0.0, 0.0, 0.0, 0.0]})
    return usable


def coco_map(ground_truth: dict[str, Any], detections: list[dict[str, Any]]) -> CocoReport:
    """COCO box mAP of `detections` (COCO results format) against `ground_truth` (COCO JSON)."""
    from pycocotools.cocoeval import COCOeval

    gt = _coco_objects(_normalized_ground_truth(ground_truth))
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt.dataset["categories"]}
    detections = usable_detections(detections, set(gt.getImgIds()))
    if not gt.dataset["annotations"]:
        raise MetricError("COCO ground truth has no annotations: mAP is undefined")
    if not detections:
        # COCO.loadRes cannot load an empty list; with nothing detected every AP is 0.
        zeros = dict.fromkeys(_categories_with_gt(gt, names), 0.0)
        return CocoReport(0.0, 0.0, 0.0, zeros, len(gt.getImgIds()), 0, [0.0] * 12)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections)  # fresh dicts from usable_detections: loadRes edits them
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(float(s), 0.0) for s in evaluator.stats]
    return CocoReport(
        map=stats[0], map50=stats[1], map75=stats[2],
        per_class_ap50=_per_class_ap50(evaluator, names),
        images=len(gt.getImgIds()), detections=len(detections), stats=stats,
    )


def _categories_with_gt(gt: Any, names: dict[int, str]) -> list[str]:
    return [names[c] for c in sorted(names) if gt.getAnnIds(catIds=[c])]


def _per_class_ap50(evaluator: Any, names: dict[int, str]) -> dict[str, float]:
    # precision: [IoU thresholds, recall points, categories, area ranges, max dets];
    # IoU index 0 is 0.50, area 0 is "all", max-dets index -1 is 100. -1 marks "no ground truth".
    precision = evaluator.eval["precision"][0, :, :, 0, -1]
    out: dict[str, float] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        column = precision[:, k]
        if (column > -1).any():
            out[names[cat_id]] = float(column[column > -1].mean())
    return out


# -- detection: precision / recall / F1 at a score threshold -----------------------------------
@dataclass(frozen=True)
class DetectionPRReport:
    """Detection precision/recall/F1 at one score threshold, matching at IoU >= `iou`."""

    score_threshold: float
    iou: float
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int


def _match_counts(
    gt_boxes: list[list[float]], det_boxes: list[list[float]], iou_threshold: float
) -> int:
    """True positives: greedy one-to-one matching, detections in descending score order."""
    from pycocotools import mask as mask_utils

    if not gt_boxes or not det_boxes:
        return 0
    ious = np.asarray(mask_utils.iou(det_boxes, gt_boxes, [0] * len(gt_boxes)))
    used = np.zeros(len(gt_boxes), dtype=bool)
    matched = 0
    for row in ious:
        candidates = np.where(~used & (row >= iou_threshold))[0]
        if len(candidates):
            used[candidates[row[candidates].argmax()]] = True
            matched += 1
    return matched


def _group_boxes(
    items: list[dict[str, Any]], min_score: float | None = None
) -> dict[tuple[Any, Any], list[dict[str, Any]]]:
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for item in items:
        if min_score is not None and item["score"] < min_score:
            continue
        groups.setdefault((item["image_id"], item["category_id"]), []).append(item)
    return groups


def _check_prf_options(score_threshold: Any, iou: Any) -> None:
    if not is_real(score_threshold) or math.isnan(score_threshold):
        raise MetricError(f"score threshold must be a number, got {score_threshold!r}")
    if not is_real(iou) or not 0 < iou <= 1:
        raise MetricError(f"IoU threshold must be a number in (0, 1], got {iou!r}")


def _prf(data: dict[str, Any], detections: list[dict[str, Any]], score_threshold: float,
         iou: float) -> DetectionPRReport:
    """detection_prf of normalized ground truth and usable detections."""
    gt_groups = _group_boxes([dict(a, score=1.0) for a in data["annotations"]
                              if not a.get("iscrowd")])
    det_groups = _group_boxes(detections, score_threshold)
    tp = 0
    for key, dets in det_groups.items():
        ordered = sorted(dets, key=lambda d: -float(d["score"]))
        tp += _match_counts([g["bbox"] for g in gt_groups.get(key, [])],
                            [d["bbox"] for d in ordered], iou)
    n_det = sum(len(d) for d in det_groups.values())
    n_gt = sum(len(g) for g in gt_groups.values())
    precision = tp / n_det if n_det else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return DetectionPRReport(score_threshold, iou, precision, recall, f1, tp, n_det - tp, n_gt - tp)


def detection_prf(
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    score_threshold: float = 0.5,
    iou: float = 0.5,
) -> DetectionPRReport:
    """Precision, recall and F1 of detections scoring >= `score_threshold`, same-class IoU match."""
    _check_prf_options(score_threshold, iou)
    data = _normalized_ground_truth(ground_truth)
    usable = usable_detections(detections, {img["id"] for img in data["images"]})
    return _prf(data, usable, score_threshold, iou)


def best_f1_threshold(
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    thresholds: Sequence[float] | None = None,
    iou: float = 0.5,
) -> DetectionPRReport:
    """The score threshold maximising F1 on a validation set (the highest threshold on ties).

    Candidates default to every distinct detection score, so the optimum is exact.
    """
    data = _normalized_ground_truth(ground_truth)
    usable = usable_detections(detections, {img["id"] for img in data["images"]})
    if thresholds is None:
        thresholds = sorted({d["score"] for d in usable}) or [0.5]
    for threshold in thresholds:
        _check_prf_options(threshold, iou)
    reports = [_prf(data, usable, t, iou) for t in sorted(thresholds)]
    return max(reversed(reports), key=lambda r: r.f1)

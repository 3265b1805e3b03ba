"""Detector outputs -> the boxes scoring at least the threshold, with label names (`detection.boxes`).

Takes what a detector with its decoding inside answers (boxes FP32 [N, K, 4], scores FP32 [N, K],
labels INT64 [N, K] class indices) and keeps, per row, the boxes whose score reaches
`score_threshold` (the model config's `parameters.score_threshold` through `params_from`), best
first; a score of 0 or less, or NaN, is never kept (padding, as `detections_to_coco` reads it).
Rows keep the fixed width K so that they batch: `count` INT32 [N] says how many lead each row;
the rest have score 0, box 0 and label b"".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from surge.errors import ConfigError, InputError
from surge.processors import ProcessorSpec, declares, once_per
from surge.runtimes.base import TensorSpec


def _threshold(params: Mapping[str, Any]) -> float:
    value = params.get("score_threshold")
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(f"params.score_threshold must be a number in [0, 1], got {value!r}")
    labels = params.get("labels")
    if labels is not None and not isinstance(labels, list):
        # a string would be indexed by character: class 1 of "cat,dog" named b"a"
        raise ConfigError(f"params.labels must be a list of class names, got {labels!r}")
    return float(value)


def describe_boxes(params: Mapping[str, Any]) -> ProcessorSpec:
    _threshold(params)
    return ProcessorSpec(
        {"boxes": TensorSpec("boxes", "FP32", (-1, -1, 4)),
         "scores": TensorSpec("scores", "FP32", (-1, -1)),
         "labels": TensorSpec("labels", "INT64", (-1, -1))},
        {"boxes": TensorSpec("boxes", "FP32", (-1, -1, 4)),
         "scores": TensorSpec("scores", "FP32", (-1, -1)),
         "labels": TensorSpec("labels", "BYTES", (-1, -1)),
         "count": TensorSpec("count", "INT32", (-1,))})


@declares(describe_boxes, inline=True)
def boxes(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Keep the boxes at or above the threshold, best first; name their classes."""
    threshold = _threshold(params)
    found, scores, classes = inputs["boxes"], inputs["scores"], inputs["labels"]
    if found.ndim != 3 or found.shape[2] != 4 or scores.shape != found.shape[:2] \
            or classes.shape != scores.shape:
        raise InputError(f"inputs 'boxes' [N, K, 4], 'scores' and 'labels' [N, K] disagree: "
                         f"{list(found.shape)}, {list(scores.shape)}, {list(classes.shape)}")
    # Fancy indexing by row, not np.take_along_axis: a request's few rows of K boxes cost
    # microseconds of numpy, and take_along_axis builds its index in Python on every call.
    rows = np.arange(found.shape[0])[:, None]
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = scores[rows, order]
    # A score of 0 is padding (as `detections_to_coco` reads it), also at threshold 0.
    keep = (sorted_scores >= threshold) & (sorted_scores > 0)
    zero = np.float32(0)  # FP32 inputs stay FP32: no cast, no copy
    return {
        "boxes": np.where(keep[..., None], found[rows, order], zero).astype(np.float32,
                                                                             copy=False),
        "scores": np.where(keep, sorted_scores, zero).astype(np.float32, copy=False),
        "labels": _label_names(classes[rows, order], keep, params.get("labels")),
        "count": keep.sum(axis=1, dtype=np.int32),
    }


def _label_names(classes: np.ndarray, keep: np.ndarray, names: list[Any] | None) -> np.ndarray:
    """Class indices -> their names as bytes (the index itself when the config has no labels);
    b"" for the boxes not kept."""
    if names is None:
        named = np.array([str(int(c)).encode() for c in classes.ravel()],
                         dtype=object).reshape(classes.shape)
        return np.where(keep, named, b"")
    table = once_per(names, _label_table)
    # Index 0 of `table` is b"": an unknown class index, or a box not kept, reads as no name.
    known = keep & (classes >= 0) & (classes < len(names))
    return table[np.where(known, classes + 1, 0)]


def _label_table(names: list[Any]) -> np.ndarray:
    return np.array([b""] + [str(n).encode() for n in names], dtype=object)

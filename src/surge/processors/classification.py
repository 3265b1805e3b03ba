"""Classification logits -> the top-k labels and scores (`labels.topk`).

params: k (5); labels (the class names; a step gets its model's `labels` through `params_from`,
else the class index is the label); softmax (true: scores are probabilities; false: the raw
logits).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from surge.errors import ConfigError, InputError, ServingError
from surge.processors import ProcessorSpec, declares, once_per
from surge.runtimes.base import TensorSpec

MAX_K = 1000


def _k(params: Mapping[str, Any]) -> int:
    k = params.get("k", 5)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ConfigError(f"params.k must be an integer from 1 to {MAX_K}, got {k!r}")
    labels = params.get("labels")
    if labels is not None and not (isinstance(labels, list) and len(labels) >= k):
        raise ConfigError(f"params.labels must list at least k={k} class names")
    return k


def describe_topk(params: Mapping[str, Any]) -> ProcessorSpec:
    k = _k(params)
    labels = params.get("labels")
    classes = len(labels) if labels is not None else -1
    return ProcessorSpec({"logits": TensorSpec("logits", "FP32", (-1, classes))},
                         {"labels": TensorSpec("labels", "BYTES", (-1, k)),
                          "scores": TensorSpec("scores", "FP32", (-1, k))})


@declares(describe_topk, inline=True)
def topk(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """FP32 logits [N, C] -> labels BYTES [N, k] and scores FP32 [N, k], best first."""
    k = _k(params)
    logits = inputs["logits"]
    if logits.ndim != 2 or logits.shape[1] < k:
        raise InputError(f"input 'logits' expects [N, C] with C >= {k}, got {list(logits.shape)}")
    names = params.get("labels")
    if names is not None and len(names) != logits.shape[1]:
        raise ServingError(f"{logits.shape[1]} classes but {len(names)} labels")
    scores = logits.astype(np.float32, copy=False)
    if params.get("softmax", True):
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    table = once_per(names, _label_table) if names is not None else _index_table(logits.shape[1])
    return {"labels": table[best], "scores": np.take_along_axis(scores, best, axis=1)}


def _label_table(names: list[Any]) -> np.ndarray:
    return np.array([str(n).encode() for n in names], dtype=object)


@functools.lru_cache(maxsize=16)
def _index_table(classes: int) -> np.ndarray:
    """Class i is named b"i" when the config has no labels."""
    return np.array([str(i).encode() for i in range(classes)], dtype=object)

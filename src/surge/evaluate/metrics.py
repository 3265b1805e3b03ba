"""Metrics as pure functions over numpy arrays and COCO dicts; each returns a dataclass report.

Classification metrics use scikit-learn: the definitions (averaging, crowd handling) are the
ones the field reports. Box metrics (COCO mAP, P/R/F1) live with their task, in
`surge.tasks.coco_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from surge.errors import SurgeError


class MetricError(SurgeError):
    """Inputs to a metric do not fit together (shapes, lengths, missing fields)."""


def report_dict(report: Any) -> dict[str, Any]:
    """A report dataclass as plain JSON-ready data."""
    return asdict(report)


# -- classification ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall and F1 of one class (one-vs-rest)."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """Accuracy, top-k, macro P/R/F1, per-class metrics and the confusion matrix.

    `confusion[i][j]` counts samples of true class i predicted as class j.
    """

    count: int
    accuracy: float
    top_k: dict[int, float]
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]

    @property
    def headline(self) -> float:
        """Accuracy in percent: the default headline (`surge.evaluate.harness.METRICS`)."""
        return 100.0 * self.accuracy


def _labels_1d(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise MetricError(f"labels must be 1-D, got shape {list(labels.shape)}")
    return labels.astype(np.int64)


def _class_ids(labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    """Labels as class ids, refused unless whole numbers in [0, num_classes): a cast would turn
    2.5 into 2 and NaN into a huge number, and a class the model has no score for would
    silently count as a miss."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise MetricError(f"labels must be 1-D, got shape {list(labels.shape)}")
    if not len(labels):
        raise MetricError("no samples to score")
    if labels.dtype.kind not in "iub" and not (
            labels.dtype.kind == "f" and np.isfinite(labels).all()
            and (labels == np.round(labels)).all()):
        raise MetricError(f"labels must be whole class ids, got {labels.dtype} values such as "
                          f"{_first_odd(labels)}")
    top = num_classes if num_classes is not None else np.inf
    outside = labels[(labels < 0) | (labels >= top)]
    if len(outside):
        scored = f"0 to {num_classes - 1}" if num_classes is not None else "from 0"
        raise MetricError(f"label {outside[0].item()!r} is out of range: the model scores "
                          f"class ids {scored}")
    return labels.astype(np.int64)


def _first_odd(labels: np.ndarray) -> str:
    if labels.dtype.kind != "f":
        return repr(labels[0].item())
    odd = labels[~np.isfinite(labels) | (labels != np.round(labels))]
    return repr(float(odd[0])) if len(odd) else repr(float(labels[0]))


def _checked_scores(scores: np.ndarray) -> np.ndarray:
    """Class scores [N, C] without NaN, or class ids [N]: a NaN row's argmax is whatever index
    comes first, and a cast of real-valued [N] outputs (a regression model's) would floor 2.7
    to class 2, either scored as if it were a prediction."""
    if scores.ndim not in (1, 2):
        raise MetricError(f"classification scores must be [N, classes] or class ids [N], got "
                          f"shape {list(scores.shape)}")
    if scores.dtype.kind not in "biuf":
        raise MetricError(f"classification scores must be numbers, got {scores.dtype}")
    if scores.dtype.kind == "f":
        nan_rows = np.flatnonzero(np.isnan(scores).reshape(len(scores), -1).any(axis=1))
        if len(nan_rows):
            raise MetricError(f"the model's scores are NaN in {len(nan_rows)} of {len(scores)} "
                              f"rows (the first: row {nan_rows[0]}); their predicted class "
                              "would be arbitrary")
        if scores.ndim == 1 and not (np.isfinite(scores).all()
                                     and (scores == np.round(scores)).all()):
            raise MetricError(f"classification scores must be [N, classes] or whole class ids "
                              f"[N]; the model gave [N] real values such as "
                              f"{_first_odd(scores)} (a regression output?)")
    return scores


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Fraction of predictions equal to the labels."""
    from sklearn.metrics import accuracy_score

    labels = _labels_1d(labels)
    predictions = np.asarray(predictions)
    if predictions.shape != labels.shape:
        raise MetricError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not len(labels):
        raise MetricError("no samples to score")
    return float(accuracy_score(labels, predictions))


def top_k_accuracy(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest scores."""
    labels = _labels_1d(labels)
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise MetricError(f"scores must be [{len(labels)}, classes], got {list(scores.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise MetricError(f"top-k needs 1 <= k <= {scores.shape[1]} classes, got k={k}")
    # argpartition is O(n) per row; ties resolve arbitrarily, as in every top-k definition.
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def classification_report(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str] | None = None,
    top_k: Sequence[int] = (1, 5),
) -> ClassificationReport:
    """Score class scores/logits [N, C] (or predicted class ids [N]) against labels [N]."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = _class_ids(labels, scores.shape[1] if np.ndim(scores) == 2 else None)
    scores = _checked_scores(np.asarray(scores))
    num_classes = scores.shape[1] if scores.ndim == 2 else int(max(labels.max(), scores.max())) + 1
    if class_names is not None:
        num_classes = max(num_classes, len(class_names))
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    predictions = scores.argmax(axis=1) if scores.ndim == 2 else scores.astype(np.int64)
    acc = accuracy(labels, predictions)
    ks = [k for k in top_k if scores.ndim == 2 and k <= scores.shape[1]]
    ids = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0
    )
    per_class = [
        ClassMetrics(names[i], float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i in ids
    ]
    # Macro averages over classes present in the labels, so absent classes do not count as 0.
    present = support > 0
    return ClassificationReport(
        count=len(labels),
        accuracy=acc,
        top_k={k: top_k_accuracy(labels, scores, k) for k in ks},
        macro_precision=float(precision[present].mean()),
        macro_recall=float(recall[present].mean()),
        macro_f1=float(f1[present].mean()),
        per_class=per_class,
        confusion=confusion_matrix(labels, predictions, labels=ids).tolist(),
    )


# -- embeddings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbeddingReport:
    """Cosine similarity of candidate embeddings to reference embeddings, row by row."""

    count: int
    mean_cosine: float
    min_cosine: float
    p1_cosine: float  # 1st percentile: the worst 1% of rows

    @property
    def headline(self) -> float:
        """Mean cosine in percent: the default headline (`surge.evaluate.harness.METRICS`)."""
        return 100.0 * self.mean_cosine


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray) -> EmbeddingReport:
    """Row-wise cosine similarity between two [N, D] (or [N, ..., D]) embedding arrays."""
    from sklearn.metrics.pairwise import paired_cosine_distances

    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim < 2 or not len(reference):
        raise MetricError(f"embedding shapes differ or are empty: reference "
                          f"{list(reference.shape)}, candidate {list(candidate.shape)}")
    ref = reference.reshape(len(reference), -1)
    cand = candidate.reshape(len(candidate), -1)
    cosine = 1.0 - paired_cosine_distances(ref, cand)
    return EmbeddingReport(len(cosine), float(cosine.mean()), float(cosine.min()),
                           float(np.percentile(cosine, 1)))


# -- latency -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyReport:
    """Latency percentiles in milliseconds over `count` samples."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def latency_percentiles(samples_s: Sequence[float] | np.ndarray) -> LatencyReport:
    """Percentiles (linear interpolation, numpy's default) of latencies given in seconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if ms.ndim != 1 or not len(ms):
        raise MetricError("latency percentiles need at least one sample")
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return LatencyReport(len(ms), float(ms.mean()), float(p50), float(p90), float(p95),
                         float(p99), float(ms.max()))

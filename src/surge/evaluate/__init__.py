"""Evaluation: metrics as pure functions, the evaluate() harness, and the profiler."""

from surge.evaluate.metrics import (
    ClassificationReport,
    ClassMetrics,
    CocoReport,
    DetectionPRReport,
    EmbeddingReport,
    LatencyReport,
    MetricError,
    accuracy,
    best_f1_threshold,
    classification_report,
    coco_map,
    detection_prf,
    embedding_fidelity,
    latency_percentiles,
    report_dict,
    top_k_accuracy,
)

__all__ = [
    "ClassMetrics",
    "ClassificationReport",
    "CocoReport",
    "DetectionPRReport",
    "EmbeddingReport",
    "LatencyReport",
    "MetricError",
    "accuracy",
    "best_f1_threshold",
    "classification_report",
    "coco_map",
    "detection_prf",
    "embedding_fidelity",
    "latency_percentiles",
    "report_dict",
    "top_k_accuracy",
]

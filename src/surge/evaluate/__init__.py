"""Evaluation: metrics as pure functions, the evaluate() harness, and the profiler (each task's
own metrics, such as COCO mAP, live with it in `surge.tasks`)."""

from surge.evaluate.metrics import (
    ClassificationReport,
    ClassMetrics,
    EmbeddingReport,
    LatencyReport,
    MetricError,
    accuracy,
    classification_report,
    embedding_fidelity,
    latency_percentiles,
    report_dict,
    top_k_accuracy,
)

__all__ = [
    "ClassMetrics",
    "ClassificationReport",
    "EmbeddingReport",
    "LatencyReport",
    "MetricError",
    "accuracy",
    "classification_report",
    "embedding_fidelity",
    "latency_percentiles",
    "report_dict",
    "top_k_accuracy",
]

"""Embedding: vectors scored by their cosine fidelity to the original model's vectors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from surge.evaluate.metrics import EmbeddingReport, MetricError, embedding_fidelity
from surge.tasks.base import CheckMeasures, Decoder, Task
from surge.tasks.data import EvalDataset

if TYPE_CHECKING:
    from surge.optimize.variant import Tolerance


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the cosine between matching rows of `a` and `b` (flattened)."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return float(np.mean((a2 * b2).sum(1) / np.maximum(norms, 1e-12)))


class Embedding(Task):
    """Outputs [N, D]; there are no targets: a variant is scored against the original."""

    name = "embedding"
    metrics: ClassVar[dict[str, str]] = {"cosine": "mean_cosine", "min_cosine": "min_cosine"}
    scores_against_reference = True

    def headline_range(self, metric: str) -> tuple[float, float]:
        return -100.0, 100.0  # cosines, in percent

    def score(self, dataset: EvalDataset, outputs: Mapping[str, np.ndarray], output: str,
              reference: np.ndarray | None, decoder: Decoder | None) -> EmbeddingReport:
        if reference is None:
            raise MetricError("embedding evaluation needs the reference model's outputs")
        return embedding_fidelity(reference, outputs[output])

    def check(self, reference: np.ndarray, candidate: np.ndarray,
              labels: np.ndarray | None) -> CheckMeasures:
        return CheckMeasures(cosine=mean_cosine(reference, candidate))

    def tolerance(self, has_labels: bool) -> Tolerance:
        from surge.optimize.variant import Tolerance

        return Tolerance(min_cosine=0.98)

"""Ranking and retrieval: a model scores (query, candidate) rows; rows of one query form its
candidate list. Scored by NDCG@k and recall@k per list, and by AUC over all rows (CTR).

Labels are [N, 2] rows of (query id, relevance), or [N] relevance for a single list. Relevance
is graded (0 = irrelevant); a click is relevance 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from surge.evaluate.metrics import MetricError
from surge.tasks.base import CheckMeasures, Decoder, LossFn, Task, TrainMetric
from surge.tasks.data import EvalDataset, Split
from surge.tasks.tabular import (
    binary_loss,
    check_click_targets,
    logits_of,
    publish_columns,
    refuse_nan,
    roc_auc,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from surge.optimize.variant import Tolerance
    from surge.train.config import TrainConfig
    from surge.train.publish import Published

K = 10
# A variant's default budget, in points: on the CTR model of docs/applications/recommendation.md
# fp16 and int8 tables moved NDCG@10 by at most 0.1 and AUC by under 0.01; a broken variant
# fell by 15 to 50.
MAX_NDCG_DROP = 2.0
MAX_AUC_DROP = 1.0


def query_lists(queries: np.ndarray, relevance: np.ndarray,
                scores: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(relevance, scores) of each query's candidates, queries in id order."""
    order = np.argsort(queries, kind="stable")
    queries, relevance, scores = queries[order], relevance[order], scores[order]
    bounds = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1], True])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        yield relevance[start:stop], scores[start:stop]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties: the earlier row first)."""
    return np.argsort(-scores, kind="stable")[:k]


def dcg(gains: np.ndarray) -> float:
    """Discounted cumulative gain of gains in ranked order: sum rel_i / log2(i + 1), i from 1."""
    return float((gains / np.log2(np.arange(2, len(gains) + 2))).sum())


def ndcg_at_k(relevance: np.ndarray, scores: np.ndarray, k: int) -> float:
    """DCG of the model's top k over the best achievable DCG of k (1 = ideal order)."""
    ideal = dcg(np.sort(relevance)[::-1][:k])
    return dcg(relevance[top_k(scores, k)]) / ideal if ideal > 0 else 0.0


def recall_at_k(relevance: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of the relevant candidates (relevance > 0) that the top k holds."""
    relevant = relevance > 0
    return float(relevant[top_k(scores, k)].sum() / relevant.sum()) if relevant.any() else 0.0


@dataclass(frozen=True)
class RankingReport:
    """Means over the queries with at least one relevant candidate, and AUC over all rows."""

    count: int
    queries: int
    k: int
    ndcg_at_k: float
    recall_at_k: float
    auc: float


def query_relevance(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query ids, relevance) of [N] or [N, 2] labels. A fractional or NaN query id would be
    cut to a whole one and merge lists; NaN or negative relevance would count as irrelevant or
    pull NDCG below 0: all refused."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        queries, relevance = np.zeros(len(labels)), labels.astype(np.float64)
    elif labels.ndim == 2 and labels.shape[1] == 2:
        queries, relevance = labels[:, 0], labels[:, 1].astype(np.float64)
    else:
        raise MetricError(f"ranking labels must be [N] relevance or [N, 2] (query, relevance), "
                          f"got shape {list(labels.shape)}")
    if queries.dtype.kind == "f" and not (np.isfinite(queries) & (queries == np.round(queries))
                                          ).all():
        odd = queries[~np.isfinite(queries) | (queries != np.round(queries))]
        raise MetricError(f"query ids must be whole numbers, got {odd[0].item()!r}")
    refuse_nan(relevance, "relevance labels")
    if len(relevance) and relevance.min() < 0:
        raise MetricError(f"relevance must be >= 0 (0 = irrelevant), got {relevance.min().item()!r}")
    return queries.astype(np.int64), relevance


def ranking_report(labels: np.ndarray, scores: np.ndarray, k: int = K) -> RankingReport:
    queries, relevance = query_relevance(labels)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(relevance):
        raise MetricError(f"{len(scores)} scores for {len(relevance)} labelled rows")
    refuse_nan(scores, "scores")
    ndcg, recall = [], []
    for rel, score in query_lists(queries, relevance, scores):
        if rel.any():
            ndcg.append(ndcg_at_k(rel, score, k))
            recall.append(recall_at_k(rel, score, k))
    if not ndcg:
        raise MetricError("no query has a relevant candidate to rank")
    return RankingReport(len(scores), len(ndcg), k, float(np.mean(ndcg)), float(np.mean(recall)),
                         roc_auc(relevance > 0, scores))


class Ranking(Task):
    """One score per (query, candidate) row: higher ranks first. Published models answer a
    click probability (CTR); ranking needs only the order."""

    name = "ranking"
    metrics: ClassVar[dict[str, str]] = {f"ndcg@{K}": "ndcg_at_k", f"recall@{K}": "recall_at_k",
                                         "auc": "auc"}
    train_metric = TrainMetric(record="val_auc", published="val_auc", label="AUC",
                               per_sample=False)

    def score(self, dataset: EvalDataset, outputs: Mapping[str, np.ndarray], output: str,
              reference: np.ndarray | None, decoder: Decoder | None) -> RankingReport:
        if dataset.labels is None:
            raise MetricError(f"dataset {dataset.name!r} has no relevance labels to rank by")
        return ranking_report(dataset.labels, outputs[output])

    def check(self, reference: np.ndarray, candidate: np.ndarray,
              labels: np.ndarray | None) -> CheckMeasures:
        """NDCG@k and AUC of the variant's scores and the original's on the labelled lists: raw
        errors miss what matters here. Static int8 of a CTR model's embedding tables ranked
        candidates as badly as random scores (NDCG@10 0.26 vs 0.76), and nothing refused it."""
        if labels is None:
            return CheckMeasures()
        try:
            theirs = ranking_report(labels, reference)
        except MetricError as exc:  # the data's fault, not the variant's: say which data
            raise MetricError(f"the ranking check cannot score the original on its "
                              f"{len(labels)} labelled check rows ({exc}); check on more rows "
                              "(surge optimize --check-rows)") from None
        ours = ranking_report(labels, candidate)
        return CheckMeasures(ndcg=ours.ndcg_at_k, reference_ndcg=theirs.ndcg_at_k,
                             auc=ours.auc, reference_auc=theirs.auc)

    def tolerance(self, has_labels: bool) -> Tolerance:
        from surge.optimize.variant import Tolerance

        if not has_labels:
            return Tolerance()
        return Tolerance(max_ndcg_drop=MAX_NDCG_DROP, max_auc_drop=MAX_AUC_DROP)

    def loss(self, model: nn.Module, label_smoothing: float) -> LossFn:
        return binary_loss

    def check_targets(self, split: Split, what: str) -> None:
        check_click_targets(split, what, graded=True)

    def validation_metric(self, model: nn.Module, split: Split, device: torch.device) -> float:
        labels = split.labels.numpy()
        return roc_auc(labels[:, -1] if labels.ndim == 2 else labels,
                       logits_of(model, split, device))

    def publish(self, model: nn.Module, config: TrainConfig, metrics: dict[str, Any],
                example: torch.Tensor) -> Published:
        return publish_columns(model, config, metrics, example, probability=True)

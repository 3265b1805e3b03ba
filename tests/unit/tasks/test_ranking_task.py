"""Ranking metrics against values worked out by hand, and the registered `ranking` task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surge.evaluate.metrics import MetricError
from surge.optimize import Tolerance
from surge.optimize.check import compare
from surge.optimize.names import parse_tolerance
from surge.tasks import EvalDataset, Split, get_task
from surge.tasks.ranking import ndcg_at_k, ranking_report, recall_at_k
from surge.tasks.tabular import binary_loss


def test_ndcg_at_k_by_hand() -> None:
    relevance = np.array([3.0, 2.0, 0.0, 1.0])
    scores = np.array([0.1, 0.9, 0.5, 0.3])
    # Ranked: rel 2, 0, 1 -> DCG = 2/1 + 0/log2(3) + 1/2 = 2.5; ideal 3, 2, 1 -> 3 + 2/log2(3) + 0.5
    ideal = 3.0 + 2.0 / np.log2(3.0) + 0.5
    assert ndcg_at_k(relevance, scores, 3) == pytest.approx(2.5 / ideal)
    assert ndcg_at_k(relevance, scores, 3) == pytest.approx(0.525004, abs=1e-6)
    assert ndcg_at_k(relevance, relevance, 3) == pytest.approx(1.0)  # the ideal order
    assert ndcg_at_k(np.zeros(3), scores[:3], 3) == 0.0


def test_recall_at_k_by_hand() -> None:
    relevance = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.2, 0.9, 0.8, 0.1, 0.3])
    assert recall_at_k(relevance, scores, 2) == pytest.approx(1 / 3)  # top 2 hold one of three
    assert recall_at_k(relevance, scores, 3) == pytest.approx(2 / 3)
    assert recall_at_k(relevance, scores, 5) == pytest.approx(1.0)


def test_report_groups_rows_by_query_and_skips_lists_without_a_relevant_item() -> None:
    labels = np.array([[1, 1], [1, 0], [2, 0], [2, 0], [3, 0], [3, 1]])
    scores = np.array([0.2, 0.9, 0.4, 0.6, 0.1, 0.5])
    report = ranking_report(labels, scores, k=10)
    # query 1 ranks its clicked item second: 1/log2(3); query 3 ranks it first: 1; query 2 has none
    assert report.queries == 2
    assert report.ndcg_at_k == pytest.approx((1 / np.log2(3) + 1.0) / 2)
    assert report.recall_at_k == pytest.approx(1.0)
    # AUC over all rows: positives 0.2 and 0.5 beat 1 and 2 of the four negatives: 3/8
    assert report.auc == pytest.approx(0.375)


def test_report_rejects_bad_labels() -> None:
    with pytest.raises(MetricError, match=r"\[N, 2\]"):
        ranking_report(np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(MetricError, match="no query has a relevant"):
        ranking_report(np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(MetricError, match="2 scores for 3"):
        ranking_report(np.array([1, 0, 1]), np.zeros(2))


def test_registered_task_scores_and_headlines_in_percent() -> None:
    task = get_task("ranking")
    assert list(task.metrics) == ["ndcg@10", "recall@10", "auc"]
    dataset = EvalDataset("lists", {"user": np.array([1, 1, 3, 3])},
                          np.array([[1, 1], [1, 0], [3, 0], [3, 1]]))
    report = task.score(dataset, {"p": np.array([[0.2], [0.9], [0.1], [0.5]])}, "p", None, None)
    assert task.headline(report, "ndcg@10") == pytest.approx(100 * (1 / np.log2(3) + 1) / 2)
    assert task.headline(report, "auc") == pytest.approx(50.0)


def test_loss_and_validation_use_the_relevance_column() -> None:
    task = get_task("ranking")
    labels = torch.tensor([[7.0, 1.0], [7.0, 0.0]])
    loss = binary_loss(torch.tensor([[0.0], [0.0]]), labels)
    assert float(loss) == pytest.approx(np.log(2.0))
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    split = Split(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([[1, 1], [1, 0], [2, 0]]))
    assert task.validation_metric(model, split, torch.device("cpu")) == pytest.approx(1.0)


def _lists(queries: int = 40, candidates: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Labelled candidate lists and scores that rank each list's clicks first."""
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(queries), candidates)
    clicks = (rng.random(len(user)) < 0.2).astype(np.int64)
    scores = clicks + 0.5 * rng.random(len(user))
    return np.stack([user, clicks], 1), scores.astype(np.float32).reshape(-1, 1)


def test_variant_check_measures_the_ranking_metric_of_both_models() -> None:
    labels, reference = _lists()
    measures = get_task("ranking").check(reference, reference[::-1].copy(), labels)
    assert measures.reference_ndcg == pytest.approx(ranking_report(labels, reference).ndcg_at_k)
    assert measures.reference_auc == pytest.approx(1.0)
    assert measures.auc is not None
    assert measures.ndcg is not None
    assert measures.ndcg < 0.5 < measures.reference_ndcg
    assert get_task("ranking").check(reference, reference, None).ndcg is None


def test_a_variant_that_scrambles_the_order_fails_the_default_ranking_tolerance() -> None:
    """Scores that move little but lose the order (what int8-static did to the DLRM's tables)
    pass every raw-error budget, and the ranking task's default tolerance rejects them."""
    labels, reference = _lists()
    task = get_task("ranking")
    tolerance = task.tolerance(has_labels=True)
    assert tolerance == Tolerance(max_ndcg_drop=2.0, max_auc_drop=1.0)
    noise = np.random.default_rng(1).random(reference.shape).astype(np.float32)
    scrambled = compare({"p": reference}, {"p": 0.1 * noise}, "ranking", tolerance, labels)
    assert [f.split(" drop")[0] for f in scrambled.failures] == ["NDCG", "AUC"]
    assert not scrambled.passed
    assert scrambled.reference_ndcg == pytest.approx(1.0)
    nudged = compare({"p": reference}, {"p": reference + 1e-3 * noise}, "ranking", tolerance,
                     labels)
    assert nudged.passed
    assert nudged.ndcg is not None


def test_ranking_tolerance_parses_and_needs_labels() -> None:
    assert Tolerance(**parse_tolerance("ndcg_drop=0.5,auc_drop=0.2")) == Tolerance(
        max_ndcg_drop=0.5, max_auc_drop=0.2)
    assert get_task("ranking").tolerance(has_labels=False) == Tolerance()

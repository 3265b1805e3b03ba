"""Metrics on data they are undefined on (NaN scores or labels, labels outside 0/1, negative
relevance, fractional query ids, NaN or infinite regression values) say so instead of
printing a made-up number; training refuses targets its loss and validation AUC cannot take."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surge.errors import ConfigError
from surge.evaluate.metrics import MetricError
from surge.tasks import Split, get_task
from surge.tasks.forecasting import regression_report
from surge.tasks.ranking import ranking_report
from surge.tasks.tabular import binary_report, positive_probability, roc_auc


def test_auc_refuses_nan_scores_and_labels() -> None:
    # Before: NaN sorted last and tied with nothing, so it ranked as the best score (AUC 0.0).
    with pytest.raises(MetricError, match="2 of 4 scores are NaN"):
        roc_auc(np.array([0, 1, 0, 1]), np.array([np.nan, 0.5, np.nan, 0.2]))
    with pytest.raises(MetricError, match="1 of 4 labels are NaN"):
        roc_auc(np.array([0, np.nan, 0, 1]), np.array([0.1, 0.5, 0.3, 0.2]))
    # Infinite scores still order: -inf below everything, inf above.
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([np.inf, 0.5, -np.inf, 0.2])) == 0.5


def test_auc_refuses_lengths_that_differ() -> None:
    with pytest.raises(MetricError, match="3 scores for 4 labels"):  # was an IndexError
        roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.5, 0.3]))


def test_binary_report_refuses_nan_empty_and_non_binary_labels() -> None:
    with pytest.raises(MetricError, match="1 of 4 probabilities are NaN"):
        positive_probability(np.array([np.nan, 0.5, 0.1, 0.2]))
    with pytest.raises(MetricError, match="no samples"):  # was a ZeroDivisionError
        binary_report(np.array([]), np.array([]))
    with pytest.raises(MetricError, match="must be 0 or 1, got 2"):  # 2 counted as positive
        binary_report(np.array([0, 2, 0, 1]), np.array([0.1, 0.5, 0.3, 0.2]))
    with pytest.raises(MetricError, match="must be 0 or 1, got -1"):  # -1 as negative
        binary_report(np.array([-1, 1, -1, 1]), np.array([0.1, 0.9, 0.2, 0.8]))


@pytest.mark.parametrize(("labels", "scores", "match"), [
    ([[0, 1], [0, 0], [0, 0]], [np.nan, 0.5, 0.3], "1 of 3 scores are NaN"),
    ([[0, -1], [0, 0], [1, 1], [1, 0]], [0.5, 0.4, 0.3, 0.1], "relevance must be >= 0"),
    ([[0, np.nan], [0, 1], [1, 1], [1, 0]], [0.5, 0.4, 0.3, 0.1], "relevance labels are NaN"),
    ([[0.2, 1], [0.7, 0], [1, 1], [1, 0]], [0.5, 0.4, 0.3, 0.1], "whole numbers, got 0.2"),
    ([[np.nan, 1], [0, 0], [1, 1], [1, 0]], [0.5, 0.4, 0.3, 0.1], "whole numbers, got nan"),
])
def test_ranking_refuses_undefined_lists(labels: list[list[float]], scores: list[float],
                                         match: str) -> None:
    with pytest.raises(MetricError, match=match):
        ranking_report(np.array(labels), np.array(scores))


@pytest.mark.parametrize(("targets", "predictions", "match"), [
    ([1.0, 2.0], [np.nan, 2.0], "1 of 2 predictions are NaN or infinite"),
    ([1.0, 2.0], [np.inf, 2.0], "1 of 2 predictions are NaN or infinite"),
    ([np.nan, 2.0], [1.0, 2.0], "1 of 2 targets are NaN or infinite"),
    ([[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0, 3.0, 4.0], "4 rows of predictions for 2 rows"),
])
def test_regression_refuses_undefined_errors(targets: list[float], predictions: list[float],
                                             match: str) -> None:
    with pytest.raises(MetricError, match=match):
        regression_report(np.array(targets), np.array(predictions))


def _split(labels: list[float] | list[list[float]]) -> Split:
    values = torch.tensor(labels)
    return Split(torch.zeros(len(values), 3), values)


@pytest.mark.parametrize(("task", "labels", "match"), [
    ("tabular-classification", [0.0, 0.0, 0.0], "one class only \\(3 negative\\)"),
    ("tabular-classification", [0.0, 2.0, 1.0], "must be 0 or 1, got 2"),
    ("tabular-classification", [0.0, float("nan"), 1.0], "labels are NaN"),
    ("ranking", [[0, 1], [0, 1], [1, 2]], "one class only \\(3 positive\\)"),
    ("ranking", [[0, 1], [0, -1], [1, 0]], "relevance must be >= 0"),
])
def test_training_refuses_targets_the_auc_cannot_take(task: str, labels: list[float],
                                                      match: str) -> None:
    with pytest.raises(ConfigError, match=f"the validation split's labels.*{match}"):
        get_task(task).check_targets(_split(labels), "the validation split's")


def test_training_takes_binary_and_graded_targets() -> None:
    get_task("tabular-classification").check_targets(_split([0.0, 1.0, 1.0]), "split")
    get_task("ranking").check_targets(_split([[0, 0], [0, 2], [1, 1]]), "split")


@pytest.mark.parametrize("name", ["regression", "forecasting"])
def test_training_refuses_targets_that_are_not_finite(name: str) -> None:
    # Before: the loss went NaN at the first batch and the run advised a lower learning rate.
    with pytest.raises(ConfigError, match="training split's targets hold 1 NaN or infinite"):
        get_task(name).check_targets(_split([1.0, float("nan"), 2.0]), "the training split's")
    get_task(name).check_targets(_split([1.0, 0.0, -2.0]), "the training split's")

"""Regression errors against values worked out by hand; headlines grow with quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surge.evaluate.metrics import MetricError
from surge.tasks import EvalDataset, Split, get_task
from surge.tasks.forecasting import regression_report


def test_errors_by_hand() -> None:
    report = regression_report(np.array([2.0, 4.0, -1.0, 0.0]), np.array([3.0, 4.0, 1.0, 1.0]))
    assert report.mae == pytest.approx(1.0)  # |1| |0| |2| |1|
    assert report.rmse == pytest.approx(np.sqrt(1.5))
    assert report.mape == pytest.approx((0.5 + 0.0 + 2.0) / 3)  # the zero target left out
    with pytest.raises(MetricError, match="every target is zero"):
        regression_report(np.zeros(2), np.ones(2))
    with pytest.raises(MetricError, match="3 predictions for 2"):
        regression_report(np.ones(2), np.ones(3))


@pytest.mark.parametrize("name", ["regression", "forecasting"])
def test_headlines_are_negated_errors(name: str) -> None:
    task = get_task(name)
    dataset = EvalDataset("series", {"window": np.zeros((4, 3))}, np.array([2.0, 4.0, -1.0, 0.0]))
    report = task.score(dataset, {"y": np.array([[3.0], [4.0], [1.0], [1.0]])}, "y", None, None)
    assert task.headline(report, "mae") == pytest.approx(-1.0)
    assert task.headline(report, "mape") == pytest.approx(-100 * 2.5 / 3)
    assert task.trained_metric().higher_is_better is False


def test_validation_metric_is_the_mean_absolute_error() -> None:
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.zero_()
    split = Split(torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 5.0]))  # predicts 2 and 4
    assert get_task("forecasting").validation_metric(model, split, torch.device("cpu")) == \
        pytest.approx(1.0)

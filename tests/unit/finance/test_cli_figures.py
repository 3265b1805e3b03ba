"""What `surge evaluate` and `surge demo` print for the applications' entries: an error in
its own units (before: "mae -14.76%" for an MAE of $14.76), every column of a column model
(before: a ValueError traceback from `surge demo` on a multi-input model), and a dataset
refused by the row that breaks the model's declared values, not only when it is the first
(before: user -1 in row 3 was scored, read from the end of the table)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from surge.evaluate.harness import evaluate
from surge.evaluate.metrics import MetricError
from surge.repository import Repository
from surge.tasks import DataOptions, EvalDataset, get_task
from surge.tasks.forecasting import RegressionReport
from surge_examples.recommendation.data import SimulatedClicks
from tests.cli_runner import run_cli

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_regression_headlines_print_the_error_itself() -> None:
    task, report = get_task("forecasting"), RegressionReport(3, 14.76, 27.67, 0.0874)
    shown = {m: task.headline_text(task.headline(report, m), m) for m in ("mae", "rmse", "mape")}
    assert shown == {"mae": "14.76 (target units)", "rmse": "27.67 (target units)",
                     "mape": "8.74%"}
    assert get_task("ranking").headline_text(77.11, "ndcg@10") == "77.11%"


def test_evaluate_prints_the_forecasters_mae_in_dollars(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["evaluate", str(EXAMPLES / "finance/repository"), "--model",
                              "price-forecaster", "--data", "stock-prices", "--task",
                              "forecasting", "--metric", "mae"], capsys)
    assert code == 0, err
    # 14.76 with VNNI; the int8 variant's products round differently on AVX2 alone (14.75)
    assert re.search(r"mae 14\.7[56] \(target units\)", " ".join(out.split())), out
    assert "-14.76%" not in out


def test_demo_runs_a_model_of_several_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["demo", "--repo", str(EXAMPLES / "recommendation/repository"),
                              "--model", "dlrm"], capsys)
    assert code == 0, err
    assert "test ndcg@10" in out
    assert "latency batch 1 p50" in out


@pytest.mark.parametrize(("column", "value", "match"), [
    ("user", -1, "input 'user' holds -1, but its config declares values in \\[0, 1999\\]"),
    ("dense", np.nan, "input 'dense' holds NaN"),
])
def test_every_row_meets_the_declared_values(column: str, value: float, match: str) -> None:
    columns, labels, _ = SimulatedClicks().lists(DataOptions(test_size=3))
    columns[column] = columns[column].astype(columns[column].dtype, copy=True)
    columns[column][3] = value
    model = Repository(EXAMPLES / "recommendation/repository").load("dlrm")
    with pytest.raises(MetricError, match=f"rows 0 to 199: {match}"):
        evaluate(model, EvalDataset("clicks", columns, labels), "ranking")


def test_class_scores_scored_as_regression_name_the_output_and_the_task() -> None:
    # "50 predictions for 5 targets" named neither the output nor what to do
    from surge.tasks.forecasting import Regression

    data = EvalDataset("d", {"x": np.zeros((5, 2), np.float32)}, np.full(5, 2.0, np.float32))
    with pytest.raises(MetricError, match=r"output 'logits' has shape \[5, 10\], 50 values for "
                                          r"5 targets .*--task classification"):
        Regression().score(data, {"logits": np.zeros((5, 10), np.float32)}, "logits", None, None)
    report = Regression().score(data, {"y": np.ones((5, 1), np.float32)}, "y", None, None)
    assert report.mae == 1.0

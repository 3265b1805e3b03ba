"""The finance applications at small size, on the real data: LightGBM and `surge train`'s MLP
on the HMDA credit data, served side by side with the same column inputs and scored by the
tabular task; the price forecaster trained and scored on the stock series against the naive
last-price forecast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from surge.evaluate.harness import evaluate, load_dataset
from surge.repository import Repository
from surge.tasks.forecasting import regression_report
from surge_examples.finance.trees import TreeParams, export_trees

ROOT = Path(__file__).resolve().parents[2]


def _train(recipe_name: str, tmp: Path, repo: Path, **changes: Any) -> None:
    recipe = yaml.safe_load((ROOT / "recipes" / recipe_name).read_text())
    recipe.update(parallelism="none", device="cpu", log_dir=str(tmp / "run"),
                  checkpoint={"dir": str(tmp / "run" / "ckpt")}, **changes)
    recipe["export"]["repo"] = str(repo)
    path = tmp / recipe_name
    path.write_text(yaml.safe_dump(recipe))
    done = subprocess.run([sys.executable, "-c", "from surge.cli import main; main()", "train",
                           str(path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr + done.stdout


def test_trees_and_network_serve_the_same_columns_and_both_learn_credit_risk(
        tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export = export_trees(repo, params=TreeParams(trees=60))
    _train("credit-mlp.yaml", tmp_path, repo, epochs=3)
    dataset = load_dataset("hmda-credit")
    assert len(dataset) == 476
    assert "afam" not in dataset.inputs  # race is not a feature
    reports = {}
    for name in ("credit-gbm", "credit-mlp"):
        loaded = Repository(repo).load(name)
        assert loaded.runner.signature.input_names == list(dataset.inputs)
        reports[name] = evaluate(loaded, dataset, "tabular-classification")
        assert reports[name].metric_name == "auc"
        assert reports[name].details.auc > 0.7  # a constant score would be 0.5
    assert reports["credit-gbm"].details.auc == pytest.approx(export.val_auc, abs=1e-6)
    # the export declares every column finite: a NaN is refused, not scored
    specs = Repository(repo).load("credit-mlp").signature.inputs
    assert [(s.name, s.values and s.values.describe()) for s in specs] == [
        (name, "finite values") for name in dataset.inputs]


def test_forecaster_trains_on_the_past_and_is_scored_on_2008_to_2010(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _train("price-forecaster.yaml", tmp_path, repo, epochs=3)
    dataset = load_dataset("stock-prices")
    report = evaluate(Repository(repo).load("price-forecaster"), dataset, "forecasting",
                      metric="mape")
    naive = regression_report(dataset.labels, dataset.inputs["window"][:, -1])
    assert report.metric == pytest.approx(-100 * report.details.mape)
    # It starts at the naive forecast and a few epochs keep it close to it: a model that had
    # broken the price scale would be off by far more than 2 points.
    assert abs(report.details.mape - naive.mape) < 0.02
    assert np.isfinite(report.details.rmse)

"""A new task is one file outside the library: `surge train` trains it, exports it into a
repository, and `surge.evaluate` scores the served model with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.cli_runner import run_cli

from surge.evaluate.harness import evaluate, load_dataset
from surge.repository import Repository

TOY = "tests.e2e.toy_regression"


def _recipe(tmp_path: Path) -> Path:
    recipe = {
        "task": f"{TOY}:ToyRegression",
        "model": {"builder": f"{TOY}:linear", "input_name": "x", "output_name": "y",
                  "input_shape": [4]},
        "data": {"dataset": f"{TOY}:toy_data"},  # the reader's defaults, as evaluation reads it
        "optimizer": {"name": "adamw", "lr": 0.05}, "schedule": {"name": "constant"},
        "epochs": 1, "batch_size": 8, "parallelism": "none", "device": "cpu",
        "log_dir": str(tmp_path / "run"), "checkpoint": {"dir": str(tmp_path / "run" / "ckpt")},
        "export": {"repo": str(tmp_path / "repo"), "name": "toy", "formats": ["onnx"]},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_task_from_outside_the_library_trains_exports_and_evaluates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["train", str(_recipe(tmp_path))], capsys)
    assert code == 0, err
    assert "val MAE" in out
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    metrics = json.loads((tmp_path / "repo" / "toy" / "metrics.json").read_text())
    assert metrics["val_mae"] == pytest.approx(record["val_mae"])

    repo = Repository(tmp_path / "repo")
    loaded = repo.load("toy")
    assert loaded.config.parameters["task"] == f"{TOY}:ToyRegression"
    dataset = load_dataset(f"{TOY}:toy_data", "x")
    report = evaluate(loaded, dataset, loaded.config.parameters["task"])
    assert (report.task, report.metric_name, report.count) == ("toy-regression", "mae", 64)
    # The served ONNX model scores what training measured on the same validation split.
    assert report.metric == pytest.approx(record["val_mae"], rel=1e-4)
    # One epoch of 32 steps learns the linear map well: the mean error is a fraction of the
    # targets' spread (a constant predictor would be off by about 2.0 on average).
    assert report.metric < 0.5 * float(np.abs(dataset.labels - dataset.labels.mean()).mean())

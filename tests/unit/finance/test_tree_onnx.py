"""A LightGBM model converted to ONNX answers what LightGBM itself predicts, through the column
inputs and the single `probability` output the neural model has too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from surge.errors import InputError
from surge.repository import Repository
from surge.tasks.tabular import Column, unpack
from surge_examples.finance.trees import TreeParams, train_lightgbm, tree_onnx, with_columns

COLUMNS = (Column("income"), Column("debt_ratio"), Column("history"))


def _rows(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, (count, len(COLUMNS))).astype(np.float32)
    logit = 1.5 * features[:, 1] - features[:, 0] + np.where(features[:, 2] > 0.5, 1.0, -0.5)
    return features, (rng.random(count) < 1 / (1 + np.exp(-logit))).astype(np.int64)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Repository]:
    features, labels = _rows(600, seed=0)
    model = train_lightgbm(features, labels, TreeParams(trees=40, leaves=7))
    repo = tmp_path_factory.mktemp("repo")
    path = Path(repo) / "gbm" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(with_columns(tree_onnx(model, len(COLUMNS)), COLUMNS), str(path))
    return model, Repository(repo)


def test_onnx_outputs_equal_lightgbm_predictions(served: tuple[object, Repository]) -> None:
    model, repo = served
    features, _ = _rows(300, seed=1)
    runner = repo.load("gbm").runner
    got = runner.run(unpack(COLUMNS, features))["probability"]
    assert got.shape == (300, 1)
    expected = model.predict_proba(features)[:, 1]  # type: ignore[attr-defined]
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-5, atol=1e-6)
    assert float(np.std(expected)) > 0.05  # the trees really split the rows


def test_served_signature_is_one_input_per_column(served: tuple[object, Repository]) -> None:
    signature = served[1].load("gbm").runner.signature
    assert signature.input_names == ["income", "debt_ratio", "history"]
    assert signature.output_names == ["probability"]
    assert signature.batched
    with pytest.raises(InputError, match=r"missing input\(s\) \['history'\]"):
        signature.validate_inputs({"income": np.zeros(2, np.float32),
                                   "debt_ratio": np.zeros(2, np.float32)})

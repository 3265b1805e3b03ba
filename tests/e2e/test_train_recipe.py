"""A whole recipe in one process: train, checkpoint, stop, resume, export, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from tests.unit.train.tiny import FEATURES, recipe

from surge.cli import main
from surge.repository import Repository
from surge.train.config import parse_train_config
from surge.train.recipe import run


def _records(tmp: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_a_full_stop_continues_from_the_saved_epoch(tmp_path: Path) -> None:
    first = run(parse_train_config(recipe(tmp_path, epochs=2), "r"))
    assert [h["epoch"] for h in first.history] == [1, 2]
    saved = load_file(str(tmp_path / "run" / "ckpt" / "epoch-0002" / "model.safetensors"))

    second = run(parse_train_config(recipe(tmp_path, epochs=4), "r"), resume=True)
    assert second.resumed_from == 2
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    assert [r["epoch"] for r in _records(tmp_path)] == [1, 2, 3, 4]
    assert [r["resumed_from"] for r in _records(tmp_path)] == [0, 0, 2, 2]
    # Epoch 3 started from epoch 2's weights, not from scratch: its loss continues the curve.
    assert second.history[2]["train_loss"] < first.history[0]["train_loss"]
    assert json.loads((tmp_path / "run" / "ckpt" / "latest.json").read_text())["epoch"] == 4
    resumed = load_file(str(tmp_path / "run" / "ckpt" / "epoch-0004" / "model.safetensors"))
    assert resumed.keys() == saved.keys()
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_without_resume_a_run_starts_over(tmp_path: Path) -> None:
    run(parse_train_config(recipe(tmp_path, epochs=1, export={"repo": None}), "r"))
    again = run(parse_train_config(recipe(tmp_path, epochs=1, export={"repo": None}), "r"))
    assert again.resumed_from == 0
    assert [r["epoch"] for r in _records(tmp_path)] == [1]


def test_best_model_is_exported_servable_and_used_by_surge_predict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    changes = {"epochs": 3, "data.train_size": 512, "export.torch_name": "tiny-torch",
               "export.labels": list("abcd")}
    result = run(parse_train_config(recipe(tmp_path, **changes), "r"))
    assert result.published is not None
    assert result.best_accuracy > 0.5  # the synthetic task is learnable; chance is 0.25
    repo = tmp_path / "repo"
    assert {p.name for p in (repo / "tiny" / "1").iterdir()} == {"model.onnx", "model.pt2"}
    metrics = json.loads((repo / "tiny" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(result.best_accuracy)
    assert metrics["best_epoch"] == result.best_epoch
    inputs = np.random.default_rng(0).random((3, FEATURES), dtype=np.float32)
    onnx = Repository(repo).load("tiny").runner.run({"x": inputs})["y"]
    torch_out = Repository(repo).load("tiny-torch").runner.run({"x": inputs})["y"]
    np.testing.assert_allclose(onnx, torch_out, atol=1e-4)
    np.save(tmp_path / "x.npy", inputs)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(repo), "--model", "tiny", "--input", str(tmp_path / "x.npy")])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    label = "abcd"[int(onnx[0].argmax())]
    assert f"[0] {label} (class {int(onnx[0].argmax())}" in printed

"""The detector trained through the recipe (task: detection) on a few tiny canvases: the loss
falls, validation reports COCO mAP@0.5, and the export serves boxes, scores and labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from surge.cli import main
from surge.repository import Repository
from surge.train.config import parse_train_config
from surge.train.recipe import run
from surge_examples.detection.coco import save_split
from surge_examples.detection.dataset import CanvasSpec, generate_split

SIZE = 64
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def canvases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detection directory as `surge data fashion-detection` writes it, with tiny splits."""
    root = tmp_path_factory.mktemp("fashion-det")
    spec = CanvasSpec(size=SIZE, max_scale=32)
    for split, count in (("train", 48), ("val", 16)):
        save_split(generate_split(split, count, spec=spec, seed=0), root / split)
    return root


def _recipe(tmp: Path, data: Path, **changes: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = yaml.safe_load((REPO_ROOT / "recipes" / "detector.yaml").read_text())
    recipe.update({
        "epochs": 3, "batch_size": 8, "parallelism": "none", "log_dir": str(tmp / "run"),
        "checkpoint": {"dir": str(tmp / "run" / "ckpt")},
        **changes,
    })
    recipe["model"].update(input_shape=[SIZE, SIZE], kwargs={"width": 4, "classes": 10})
    recipe["data"]["root"] = str(data)
    recipe["optimizer"]["lr"] = 1e-2
    recipe["export"]["repo"] = str(tmp / "repo")
    return recipe


def test_one_process_run_lowers_the_loss_and_exports_a_served_detector(
    tmp_path: Path, canvases: Path,
) -> None:
    recipe = _recipe(tmp_path, canvases)
    recipe["export"]["torch_name"] = "detector-torch"
    result = run(parse_train_config(recipe, "r"))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert all(0.0 <= h["val_map50"] <= 1.0 for h in result.history)
    assert result.published is not None
    metrics = json.loads((tmp_path / "repo" / "detector" / "metrics.json").read_text())
    assert metrics["val_map50"] == pytest.approx(result.best_accuracy)
    model = Repository(tmp_path / "repo").load("detector")
    assert model.signature.input_names == ["image"]
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
    outputs = model.runner.run({"image": images})
    assert list(outputs) == ["boxes", "scores", "labels"]
    assert outputs["boxes"].shape == (3, 32, 4)
    assert outputs["scores"].shape == outputs["labels"].shape == (3, 32)
    assert ((outputs["labels"] >= 0) & (outputs["labels"] < 10)).all()
    # The PyTorch twin: same weights and decoding, run from the factory + safetensors.
    twin = Repository(tmp_path / "repo").load("detector-torch")
    assert twin.config.engine == "torch_factory"
    assert twin.signature.input_names == ["image"]
    twin_outputs = twin.runner.run({"image": images})
    np.testing.assert_allclose(twin_outputs["scores"], outputs["scores"], atol=1e-4)


@pytest.mark.parametrize("parallelism", ["ddp", "pipeline", "fsdp"])
def test_two_process_run_completes(
    parallelism: str, tmp_path: Path, canvases: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    config = tmp_path / "detector.yaml"
    config.write_text(yaml.safe_dump(
        _recipe(tmp_path, canvases, epochs=2, parallelism=parallelism)))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--nproc", "2", "precision=bf16"])
    assert exit_info.value.code == 0
    records = [json.loads(line)
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["world_size"], r["parallelism"]) for r in records] == [
        (1, 2, parallelism), (2, 2, parallelism)]
    # Finite: a pipeline stage's BatchNorm statistics stay clean.
    assert all(np.isfinite(r["val_loss"]) and 0.0 <= r["val_map50"] <= 1.0 for r in records)
    assert Repository(tmp_path / "repo").load("detector").signature.output_names == [
        "boxes", "scores", "labels"]

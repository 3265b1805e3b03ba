"""Tasks, datasets and model builders by name: the library's own, the examples' (found through
entry points only), and 'package.module:name' specs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from surge.errors import ConfigError
from surge.tasks import REGISTRY, DataOptions, Registry, Split, get_dataset, get_task
from surge.tasks import registry as registry_module
from surge.tasks.coco import CocoSplits, SplitDirectory, packed_targets, truth_from_targets
from surge.tasks.data import NpzDataset, SyntheticDataset


def test_one_task_vocabulary() -> None:
    assert {"classification", "detection", "embedding"} <= set(REGISTRY.task_names())
    assert get_task("Classification").name == "classification"
    assert get_task("detection").metrics == {"mAP": "map", "mAP50": "map50", "mAP75": "map75"}


def test_the_examples_register_through_entry_points() -> None:
    assert {"fashion-mnist", "fashion-detection"} <= set(REGISTRY.dataset_names())
    assert REGISTRY.builder("fashion-cnn") == "surge_examples.fashion.model:fashion_cnn"
    assert REGISTRY.builder("fashion_cnn") == REGISTRY.builder("fashion-cnn")
    assert REGISTRY.builder("pkg.mod:factory") == "pkg.mod:factory"  # not a name: as it is


def test_plugins_load_lazily_on_the_first_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Registry] = []

    def register(registry: Registry) -> None:
        calls.append(registry)
        registry.add_dataset("toy", SyntheticDataset)

    point = SimpleNamespace(name="toy", value="toy:register", load=lambda: register)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [point])
    registry = Registry()
    assert calls == []
    assert isinstance(registry.dataset("toy"), SyntheticDataset)
    registry.dataset_names()
    assert calls == [registry]  # loaded once


def test_a_failing_plugin_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def register(registry: Registry) -> None:
        raise RuntimeError("no data here")

    point = SimpleNamespace(name="broken", value="broken.plugin:register", load=lambda: register)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [point])
    with pytest.raises(ConfigError, match=r"plugin 'broken' \(broken.plugin:register\) failed "
                                          r"to register: RuntimeError: no data here"):
        Registry().task_names()


def test_tasks_by_class_path_and_clear_errors() -> None:
    assert get_task("tests.e2e.toy_regression:ToyRegression").name == "toy-regression"
    with pytest.raises(ConfigError, match="unknown task 'segmentation'; expected one of "
                                          "classification, detection, embedding"):
        get_task("segmentation")
    with pytest.raises(ConfigError, match="is function, not a surge.tasks.Task class"):
        get_task("tests.e2e.toy_regression:linear")
    with pytest.raises(ConfigError, match="'tests.e2e.toy_regression' has no 'Nope'"):
        get_task("tests.e2e.toy_regression:Nope")
    # the abstract base itself was instantiated: a TypeError traceback from the CLI
    with pytest.raises(ConfigError, match=r"task 'surge.tasks.base:Task' is abstract \(it does "
                                          r"not define .*\)"):
        get_task("surge.tasks.base:Task")


def test_datasets_by_name_function_and_path(tmp_path: Path) -> None:
    assert isinstance(get_dataset("synthetic"), SyntheticDataset)
    assert get_dataset("tests.e2e.toy_regression:toy_data").name == "toy-regression"
    np.savez(tmp_path / "val.npz", x=np.zeros((2, 3), np.float32), labels=np.array([0, 1]))
    assert isinstance(get_dataset(tmp_path / "val.npz"), NpzDataset)
    assert isinstance(get_dataset(tmp_path), SplitDirectory)
    with pytest.raises(ConfigError, match="returned ToyRegression, not a surge.tasks.Dataset"):
        get_dataset("tests.e2e.toy_regression:ToyRegression")
    with pytest.raises(ConfigError, match="dataset 'nowhere': expected one of ") as error:
        get_dataset("nowhere")
    assert "coco" in str(error.value)
    assert "synthetic" in str(error.value)


def _write_split(directory: Path, boxes_per_image: list[int]) -> None:
    directory.mkdir(parents=True)
    np.save(directory / "images.npy", np.zeros((len(boxes_per_image), 16, 16), np.uint8))
    annotations: list[dict[str, Any]] = []
    for image, count in enumerate(boxes_per_image):
        annotations += [{"id": len(annotations) + 1, "image_id": image + 1, "category_id": 2,
                         "bbox": [1.0, 2.0, 3.0, 4.0]} for _ in range(count)]
    truth = {"images": [{"id": i + 1} for i in range(len(boxes_per_image))],
             "annotations": annotations, "categories": [{"id": 1, "name": "a"},
                                                        {"id": 2, "name": "b"}]}
    (directory / "annotations.json").write_text(json.dumps(truth))


def test_coco_splits_train_on_packed_box_targets(tmp_path: Path) -> None:
    _write_split(tmp_path / "train", [2, 0, 1])
    _write_split(tmp_path / "val", [1])
    dataset = CocoSplits()
    with pytest.raises(ConfigError, match="needs data.root"):
        dataset.training(DataOptions())
    train, val = dataset.training(DataOptions(root=tmp_path))
    assert train.inputs.shape == (3, 16, 16)
    assert train.labels.shape == (3, 2, 5)  # as many slots as the fullest image
    assert train.labels[0, 0].tolist() == [1.0, 2.0, 4.0, 6.0, 1.0]  # x1 y1 x2 y2 class
    assert train.labels[1, :, 4].tolist() == [-1.0, -1.0]  # padding
    assert len(val) == 1
    evaluation = dataset.evaluation("image", DataOptions(root=tmp_path))
    assert evaluation.class_names == ["a", "b"]
    assert evaluation.image_ids.tolist() == [1]
    with pytest.raises(ConfigError, match=r"no split directory \(expected train/ and val/"):
        dataset.check(DataOptions(root=tmp_path / "missing"))


def test_packed_targets_round_trip_to_coco_ground_truth() -> None:
    truth = {"annotations": [{"image_id": 2, "category_id": 3, "bbox": [1, 1, 2, 2]}]}
    targets = torch.from_numpy(packed_targets(truth, 2, max_objects=3))
    back = truth_from_targets((2, 8, 8), targets, ["a", "b", "c"])
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in back["annotations"]] == [
        (2, 3, [1.0, 1.0, 2.0, 2.0])]
    with pytest.raises(ConfigError, match="an image holds 2 boxes, more than 1"):
        packed_targets({"annotations": truth["annotations"] * 2}, 2, max_objects=1)


def test_classification_measures_and_flips() -> None:
    task = get_task("classification")
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    candidate = np.array([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    measures = task.check(reference, candidate, np.array([0, 1, 1]))
    assert measures.top1_agreement == pytest.approx(2 / 3)
    assert (measures.reference_accuracy, measures.accuracy) == (pytest.approx(2 / 3),
                                                                 pytest.approx(1 / 3))
    flip = task.flip()
    assert flip is not None
    images = torch.arange(4.0).reshape(1, 1, 1, 4).repeat(2, 1, 1, 1)
    flipped, _ = flip(images, torch.zeros(2), torch.tensor([True, False]))
    assert flipped[0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    assert flipped[1, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert images[0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # the batch itself is untouched


def test_tasks_without_training_say_so() -> None:
    with pytest.raises(ConfigError, match="task embedding cannot be trained"):
        get_task("embedding").trained_metric()
    split = Split(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ConfigError, match="task embedding cannot be trained"):
        get_task("embedding").loss(torch.nn.Linear(2, 2), 0.0)
    assert len(get_task("classification").calibration(split, "x", 3)["x"]) == 3

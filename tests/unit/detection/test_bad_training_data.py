"""Detection training data, model options and canvases the detector cannot use: each refused with
a message naming the value, where they used to stop training with a traceback or train silently
on boxes that are not the objects'."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from surge.errors import ConfigError
from surge.tasks.coco import CocoSplits, split_evaluation, split_tensors
from surge.tasks.data import DataOptions
from surge_examples.detection.loss import detection_loss
from surge_examples.detection.model import centernet, detector
from surge_examples.detection.training import load_tensors
from tests.cli_runner import run_cli

SIDE = 32


def _split(directory: Path, annotations: list[dict[str, Any]] | None = None,
           images: np.ndarray | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "images.npy",
            np.zeros((2, SIDE, SIDE), np.uint8) if images is None else images)
    truth = {"images": [{"id": 1}, {"id": 2}],
             "categories": [{"id": i + 1, "name": str(i)} for i in range(3)],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [4, 4, 10, 8]}]
             if annotations is None else annotations}
    (directory / "annotations.json").write_text(json.dumps(truth))
    return directory


def _box(**changes: Any) -> list[dict[str, Any]]:
    return [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [4, 4, 10, 8], **changes}]


NAN = float("nan")


@pytest.mark.parametrize(("annotations", "message"), [
    (_box(category_id=4), "category_id 4 is not one of"),  # one_hot RuntimeError in the loss
    (_box(category_id=0), "category_id 0 is not one of"),  # class -1: dropped as padding
    (_box(bbox=[NAN, 4, 10, 8]), r"bbox \[nan, 4, 10, 8\] holds NaN"),  # gather index error
    (_box(bbox=[20, 20, -10, -10]), "has no area"),  # trained on a negative size
    (_box(bbox=[4, 4, 0, 8]), "has no area"),
    (_box(bbox=[500, 500, 10, 10]), "reaches outside the 32x32 image"),  # center clamped
    (_box(bbox=[4, 4, 10]), "is not four numbers"),  # ValueError: unpack
    (_box(image_id=0), "image_id 0 is not one of the images 1..2"),  # bincount ValueError
    (_box(image_id=3), "image_id 3 is not one of the images 1..2"),  # dropped silently
    (_box(image_id="1"), "image_id '1'"),  # TypeError
    ([{"id": 1, "image_id": 1, "bbox": [4, 4, 10, 8]}], "category_id None"),  # KeyError
    (["box"], "annotation 0 is not an object"),
])
def test_annotations_training_cannot_use_are_refused(tmp_path: Path, annotations: list[Any],
                                                     message: str) -> None:
    directory = _split(tmp_path / "train", annotations)
    for read in (split_tensors, lambda d: load_tensors(d), lambda d: split_evaluation(d, "x")):
        with pytest.raises(ConfigError, match=message):
            read(directory)


def test_a_box_a_rounding_error_past_the_edge_is_kept(tmp_path: Path) -> None:
    split = split_tensors(_split(tmp_path / "t", _box(bbox=[0, 0, SIDE + 0.001, 8.0])))
    assert split.labels[0, 0].tolist() == pytest.approx([0, 0, SIDE + 0.001, 8, 1])


@pytest.mark.parametrize(("write", "message"), [
    (lambda d: (d / "annotations.json").write_text("{not json"), "cannot read the split"),
    (lambda d: (d / "annotations.json").write_text("[]"), "needs an 'annotations' list"),
    (lambda d: (d / "annotations.json").write_text("{}"), "needs an 'annotations' list"),
    (lambda d: np.save(d / "images.npy", np.zeros((2, SIDE, SIDE, 3), np.uint8)),
     r"images must be numbers \[N, H, W\].*got \[2, 32, 32, 3\]"),
    (lambda d: np.save(d / "images.npy", np.array([{}]), allow_pickle=True),
     "cannot read the split"),
])
def test_split_files_it_cannot_read_are_refused(tmp_path: Path,
                                               write: Callable[[Path], Any],
                                               message: str) -> None:
    directory = _split(tmp_path / "train")
    write(directory)
    with pytest.raises(ConfigError, match=message):
        split_tensors(directory)


def test_a_validation_split_without_boxes_is_refused_before_training(tmp_path: Path) -> None:
    # It trained a whole epoch, then stopped at the validation mAP.
    _split(tmp_path / "train")
    _split(tmp_path / "val", [])
    with pytest.raises(ConfigError, match="validation canvases hold no boxes"):
        CocoSplits().training(DataOptions(root=tmp_path))


def test_images_without_boxes_still_train(tmp_path: Path) -> None:
    _split(tmp_path / "train", [])
    _split(tmp_path / "val")
    train, _ = CocoSplits().training(DataOptions(root=tmp_path))
    assert (train.labels[..., 4] == -1).all()


def test_a_class_the_model_does_not_have_is_named() -> None:
    maps = torch.zeros(1, 10 + 4, 8, 8)
    boxes = torch.tensor([[[4.0, 4.0, 12.0, 12.0]]])
    with pytest.raises(ConfigError, match="class 10 .category_id 11.*has 10 classes"):
        detection_loss(maps, boxes, torch.tensor([[10]]), 10)  # one_hot RuntimeError


@pytest.mark.parametrize("k", [0, -1, 10**9, True, 2.5, "32"])
def test_detections_per_image_it_cannot_answer_are_refused_when_built(k: Any) -> None:
    # They built, then every request failed in topk (0: an empty amax).
    with pytest.raises(ConfigError, match=f"k .detections per image. must be an integer.*{k!r}"):
        detector(width=4, k=k)


def test_more_detections_than_positions_are_padded_with_score_zero() -> None:
    model = detector(width=4, k=200).eval()  # a 16x16 image has 10 classes x 4 x 4 positions
    with torch.inference_mode():
        boxes, scores, labels = model(torch.zeros(2, 16, 16, dtype=torch.uint8))
    assert boxes.shape == (2, 200, 4)
    assert scores.shape == labels.shape == (2, 200)
    assert (scores[:, 160:] == 0).all()
    assert ((labels >= 0) & (labels < 10)).all()
    assert torch.isfinite(boxes).all()


def test_an_image_side_the_pyramid_cannot_halve_is_named() -> None:
    with pytest.raises(ConfigError, match="multiples of 16, got 40x40"):  # a size mismatch
        centernet(width=4)(torch.zeros(1, 40, 40, dtype=torch.uint8))


def test_out_under_a_file_is_refused_before_drawing(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    code, out, err = run_cli(["data", "fashion-detection", str(tmp_path / "f" / "out"),
                              "--train", "1", "--val", "1", "--test", "1"], capsys)
    assert code == 2, out + err
    assert f"OUT '{tmp_path / 'f' / 'out'}' cannot be written" in out + err
    assert "Traceback" not in out + err


def test_a_split_name_taken_by_a_file_is_named(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "val").write_text("x")
    code, out, err = run_cli(["data", "fashion-detection", str(tmp_path),
                              "--train", "1", "--val", "1", "--test", "1"], capsys)
    assert code == 2, out + err
    # refused before any canvas is drawn (it was found writing the val split)
    assert "holds files this command does not write (val)" in out + err
    assert "Traceback" not in out + err

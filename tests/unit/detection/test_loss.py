"""CenterNet targets and loss: positives at the centers, perfect maps score low, training helps."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from surge.tasks.coco import hflip, pack_targets, unpack_targets
from surge_examples.detection.dataset import generate_split
from surge_examples.detection.loss import build_targets, detection_loss
from surge_examples.detection.model import centernet
from surge_examples.detection.training import CenterNetLoss

CLASSES = 10


def _one_object() -> tuple[torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([[[10.0, 20.0, 42.0, 36.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[7, -1]])
    return boxes, labels


def test_targets_put_one_positive_at_the_center_cell_of_the_right_class() -> None:
    boxes, labels = _one_object()
    targets = build_targets(boxes, labels, CLASSES, (32, 32))
    # center (26, 28) px -> cell (6, 7) at stride 4, offset (0.5, 0.0)
    assert (targets.heat == 1).nonzero().tolist() == [[0, 7, 7, 6]]
    assert targets.heat[0, :7].max() == 0
    assert targets.heat[0, 8:].max() == 0
    assert 0 < targets.heat[0, 7, 7, 7] < 1  # the Gaussian falls off around the center
    assert targets.cell[0, 0] == 7 * 32 + 6
    assert targets.size[0, 0].tolist() == [32.0, 16.0]
    assert targets.offset[0, 0].tolist() == [0.5, 0.0]
    assert targets.valid.tolist() == [[True, False]]


def _perfect_maps(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = build_targets(boxes, labels, CLASSES, (32, 32))
    maps = torch.zeros((1, CLASSES + 4, 32, 32))
    maps[:, :CLASSES] = torch.where(targets.heat == 1, 12.0, -12.0)
    width, height = targets.size[0, 0].tolist()
    maps[0, CLASSES, 7, 6] = math.log(math.expm1(width / 16))
    maps[0, CLASSES + 1, 7, 6] = math.log(math.expm1(height / 16))
    maps[0, CLASSES + 2, 7, 6] = 0.0  # sigmoid(0) = 0.5
    maps[0, CLASSES + 3, 7, 6] = -12.0  # sigmoid(-12) ~ 0
    return maps


def test_perfect_maps_have_near_zero_loss_and_wrong_maps_do_not() -> None:
    boxes, labels = _one_object()
    perfect, parts = detection_loss(_perfect_maps(boxes, labels), boxes, labels, CLASSES)
    assert float(perfect) < 0.01
    assert parts["size"] < 1e-3
    wrong_class = labels.clone()
    wrong_class[0, 0] = 2
    wrong, _ = detection_loss(_perfect_maps(boxes, labels), boxes, wrong_class, CLASSES)
    assert float(wrong) > 5


def test_classes_compete_at_the_center_cell() -> None:
    boxes, labels = _one_object()
    maps = _perfect_maps(boxes, labels)
    _, right = detection_loss(maps, boxes, labels, CLASSES)
    assert right["class"] < 1e-6  # logit 12 against -12 elsewhere: softmax ~ 1
    # A rival class as strong as the right one at the center: the heatmap loss of the right
    # class is unchanged, the cross-entropy between classes sees the tie (log 2).
    maps[0, 3, 7, 6] = 12.0
    _, tied = detection_loss(maps, boxes, labels, CLASSES)
    assert tied["class"] == pytest.approx(math.log(2), rel=1e-4)


def test_packed_targets_round_trip_and_loss_module_matches_the_function() -> None:
    boxes, labels = _one_object()
    packed = pack_targets(boxes, labels)
    assert packed.shape == (1, 2, 5)
    back_boxes, back_labels = unpack_targets(packed)
    assert torch.equal(back_boxes, boxes)
    assert torch.equal(back_labels, labels)
    maps = torch.randn(1, CLASSES + 4, 32, 32)
    assert torch.allclose(CenterNetLoss(CLASSES)(maps, packed),
                          detection_loss(maps, boxes, labels, CLASSES)[0])


def test_hflip_mirrors_canvases_and_boxes_together() -> None:
    images = torch.zeros((2, 128, 128), dtype=torch.uint8)
    images[:, 20:30, 10:40] = 255
    targets = pack_targets(torch.tensor([[[10.0, 20, 40, 30]]] * 2), torch.tensor([[3]] * 2))
    flipped, flipped_targets = hflip(images, targets, torch.tensor([True, False]))
    assert flipped_targets[0, 0, :4].tolist() == [88.0, 20.0, 118.0, 30.0]
    assert flipped[0, 20:30, 88:118].min() == 255
    assert flipped[0].sum() == images[0].sum()
    assert torch.equal(flipped[1], images[1])
    assert torch.equal(flipped_targets[1], targets[1])


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Two OpenMP threads on a busy 2-core machine spin against each other; one runs steadily.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_a_short_training_run_lowers_the_loss() -> None:
    torch.manual_seed(0)
    split = generate_split("train", 128, seed=0)
    boxes, labels = split.padded(6)
    images = torch.from_numpy(split.images)
    targets = pack_targets(torch.from_numpy(boxes), torch.from_numpy(labels))
    model, loss_fn = centernet(width=4), CenterNetLoss(CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):  # four passes over 128 canvases in batches of 32
        for start in range(0, 128, 32):
            loss = loss_fn(model(images[start:start + 32]), targets[start:start + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses


def test_targets_are_built_on_the_device_of_the_boxes() -> None:
    # The meta device stands in for a GPU: a constant made on the CPU would not combine with it.
    boxes = torch.tensor([[[10.0, 20.0, 40.0, 60.0]]], device="meta")
    labels = torch.tensor([[3]], device="meta")
    targets = build_targets(boxes, labels, 10, (32, 32))
    assert {t.device.type for t in (targets.heat, targets.cell, targets.size, targets.offset)} == {
        "meta"}

"""Decoding with max-pool peak suppression on hand-made maps, and ONNX export parity."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from surge.tasks.export import export_boxes_model
from surge_examples.detection.model import STRIDE, centernet, decode, detector, suppress_other_classes

CLASSES = 10
GRID = 32


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _inverse_size(pixels: float) -> float:
    # The size head is softplus(raw) * 16 pixels.
    return math.log(math.expm1(pixels / 16.0))


def _maps(peaks: list[tuple[int, int, int, float, float, float, float, float]]) -> torch.Tensor:
    """Raw maps from (class, cell_x, cell_y, score, width, height, dx, dy); all else is cold."""
    maps = torch.full((1, CLASSES + 4, GRID, GRID), -12.0)
    maps[:, CLASSES:CLASSES + 2] = _inverse_size(10.0)
    for cls, x, y, score, width, height, dx, dy in peaks:
        maps[0, cls, y, x] = _logit(score)
        maps[0, CLASSES, y, x] = _inverse_size(width)
        maps[0, CLASSES + 1, y, x] = _inverse_size(height)
        maps[0, CLASSES + 2, y, x] = _logit(dx)
        maps[0, CLASSES + 3, y, x] = _logit(dy)
    return maps


def test_decode_turns_peaks_into_pixel_boxes_best_first() -> None:
    maps = _maps([(3, 5, 7, 0.9, 20.0, 30.0, 0.5, 0.25), (8, 20, 10, 0.7, 40.0, 12.0, 0.1, 0.9)])
    boxes, scores, labels = decode(maps, CLASSES, k=4)
    assert boxes.shape == (1, 4, 4)
    assert scores.shape == labels.shape == (1, 4)
    assert labels.dtype == torch.int64
    cx, cy = (5 + 0.5) * STRIDE, (7 + 0.25) * STRIDE
    expected = [cx - 10, cy - 15, cx + 10, cy + 15]
    assert boxes[0, 0].tolist() == pytest.approx(expected, abs=1e-3)
    cx, cy = (20 + 0.1) * STRIDE, (10 + 0.9) * STRIDE
    assert boxes[0, 1].tolist() == pytest.approx([cx - 20, cy - 6, cx + 20, cy + 6], abs=1e-3)
    assert scores[0, :2].tolist() == pytest.approx([0.9, 0.7], abs=1e-5)
    assert labels[0, :2].tolist() == [3, 8]
    assert (scores[0, 2:] < 1e-4).all()  # the rest is padding with near-zero scores


def test_neighbours_of_a_peak_are_suppressed_and_other_classes_softly() -> None:
    # A 3x3 blob around (10, 10) in class 2: only its maximum survives, as NMS would keep one box.
    blob = [(2, 10 + dx, 10 + dy, 0.6, 20.0, 20.0, 0.5, 0.5) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    blob[4] = (2, 10, 10, 0.95, 20.0, 20.0, 0.5, 0.5)
    same_place_other_class = (6, 11, 10, 0.8, 20.0, 20.0, 0.5, 0.5)
    far_away_same_class = (2, 13, 10, 0.5, 20.0, 20.0, 0.5, 0.5)  # outside the 3x3 window
    boxes, scores, labels = decode(_maps([*blob, same_place_other_class, far_away_same_class]),
                                   CLASSES, k=5)
    kept = [(int(c), round(float(s), 3)) for c, s in zip(labels[0], scores[0], strict=True)
            if s > 0.01]
    # Class 6 overlaps the class-2 box (IoU 0.67): kept, at 0.7 of its score.
    assert kept == [(2, 0.95), (6, 0.56), (2, 0.5)]


def test_cross_class_suppression_scales_only_boxes_beaten_by_an_overlapping_other_class() -> None:
    boxes = torch.tensor([[[0.0, 0, 20, 20], [1, 1, 21, 21], [2, 0, 22, 20], [60, 60, 80, 80],
                           [61, 60, 81, 80]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    labels = torch.tensor([[1, 2, 1, 3, 3]])
    _, got_scores, got_labels = suppress_other_classes(boxes, scores, labels)
    # Box 1 (class 2) overlaps box 0 (class 1): 0.8 -> 0.56. Box 2 is beaten by box 1 of another
    # class: 0.7 -> 0.49. Its own class's box 0 does not count (max-pool peaks handle that),
    # nor do the class-3 boxes, which overlap only each other.
    assert got_scores[0].tolist() == pytest.approx([0.9, 0.6, 0.56, 0.5, 0.49])
    assert got_labels[0].tolist() == [1, 3, 2, 3, 1]
    far = torch.tensor([[[0.0, 0, 20, 20], [15, 15, 35, 35]]])  # IoU 0.03: untouched
    _, far_scores, _ = suppress_other_classes(far, torch.tensor([[0.9, 0.8]]),
                                              torch.tensor([[1, 2]]))
    assert far_scores[0].tolist() == pytest.approx([0.9, 0.8])


def test_decode_handles_a_batch_row_by_row() -> None:
    one = _maps([(1, 3, 3, 0.9, 16.0, 16.0, 0.5, 0.5)])
    two = _maps([(4, 25, 25, 0.8, 24.0, 24.0, 0.5, 0.5)])
    boxes, scores, labels = decode(torch.cat([one, two]), CLASSES, k=2)
    assert labels[:, 0].tolist() == [1, 4]
    assert boxes[1, 0].tolist() == pytest.approx([90, 90, 114, 114], abs=1e-3)


def test_network_maps_have_the_stride_4_layout() -> None:
    net = centernet(width=8).eval()
    with torch.no_grad():
        maps = net(torch.zeros((2, 128, 128), dtype=torch.uint8))
    assert maps.shape == (2, CLASSES + 4, 32, 32)


def test_exported_onnx_model_matches_pytorch(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = detector(width=8, k=16).eval()
    example = torch.zeros((2, 128, 128), dtype=torch.uint8)
    path = export_boxes_model(model, example, tmp_path / "model.onnx", "image", model.k)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("image", "tensor(uint8)", ["batch", 128, 128])]
    assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == [
        ("boxes", "tensor(float)", ["batch", 16, 4]), ("scores", "tensor(float)", ["batch", 16]),
        ("labels", "tensor(int64)", ["batch", 16])]
    image = np.random.default_rng(0).integers(0, 256, (3, 128, 128), dtype=np.uint8)
    boxes, scores, labels = session.run(None, {"image": image})
    with torch.no_grad():
        ref_boxes, ref_scores, ref_labels = model(torch.from_numpy(image))
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-5)
    np.testing.assert_array_equal(labels, ref_labels.numpy())


def test_boxes_are_clipped_to_the_canvas() -> None:
    maps = _maps([(0, 0, 31, 0.9, 40.0, 40.0, 0.01, 0.9)])
    boxes, _, _ = decode(maps, CLASSES, k=1)
    assert boxes[0, 0].tolist() == pytest.approx([0.0, 127.6 - 20, 20.04, 128.0], abs=1e-2)


def test_decoding_stays_on_the_device_of_the_maps() -> None:
    # The meta device stands in for a GPU: a constant made on the CPU would not combine with it.
    maps = torch.zeros(2, 14, 32, 32, device="meta")
    assert {t.device.type for t in decode(maps, 10)} == {"meta"}
    model = centernet(width=4).to("meta")
    assert model(torch.zeros(1, 128, 128, dtype=torch.uint8, device="meta")).device.type == "meta"

"""The canvas generator: exact boxes, disjoint sources, valid COCO JSON, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from surge.errors import ConfigError
from surge_examples.detection.coco import ANNOTATIONS_FILE, load_split, save_split, to_coco
from surge_examples.detection.dataset import CanvasSpec, generate_split, render_item, source_pool
from surge_examples.fashion.data import load_fashion_mnist

PLAIN = CanvasSpec(texture=0.0, noise=0.0)  # items on black: every nonzero pixel is an item's


@pytest.fixture(scope="module")
def fashion_test() -> tuple[np.ndarray, np.ndarray]:
    return load_fashion_mnist("test")


def _nonzero_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def test_boxes_exactly_cover_the_pasted_items(fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = fashion_test
    split = generate_split("test", 40, spec=PLAIN, seed=3, images=images, labels=labels)
    union = np.zeros(split.images.shape, bool)
    for j in range(len(split.labels)):
        item = render_item(images[split.source_index[j]], int(split.scale[j]))
        alone = np.zeros(split.images.shape[1:], np.uint8)
        x, y = split.corner[j]
        alone[y:y + item.shape[0], x:x + item.shape[1]] = item
        assert _nonzero_box(alone > 0) == tuple(split.boxes[j].astype(int))
        canvas = split.images[split.image_index[j]]
        # Pasting keeps the brighter pixel, so the item's pixels are all at least as bright.
        assert (canvas[alone > 0] >= alone[alone > 0]).all()
        assert split.labels[j] == labels[split.source_index[j]]
        union[split.image_index[j]] |= alone > 0
    assert ((split.images > 0) == union).all()  # nothing but the items on a plain canvas


def test_object_counts_scales_and_overlap_limits() -> None:
    spec = CanvasSpec()
    split = generate_split("val", 300, seed=1)
    counts = np.bincount(split.image_index, minlength=len(split))
    assert counts.min() >= spec.min_objects
    assert counts.max() <= spec.max_objects
    assert split.scale.min() >= spec.min_scale
    assert split.scale.max() <= spec.max_scale
    assert (split.boxes[:, :2] >= 0).all()
    assert (split.boxes[:, 2:] <= spec.size).all()
    for index in range(len(split)):
        boxes, _ = split.objects_of(index)
        for a in range(len(boxes)):
            for b in range(len(boxes)):
                if a == b:
                    continue
                w = min(boxes[a, 2], boxes[b, 2]) - max(boxes[a, 0], boxes[b, 0])
                h = min(boxes[a, 3], boxes[b, 3]) - max(boxes[a, 1], boxes[b, 1])
                area = (boxes[a, 2] - boxes[a, 0]) * (boxes[a, 3] - boxes[a, 1])
                assert max(w, 0) * max(h, 0) / area <= spec.max_covered + 1e-6


def test_splits_draw_from_disjoint_source_images() -> None:
    train, val, test = (generate_split(s, 200, seed=0) for s in ("train", "val", "test"))
    assert train.source_split == "train"
    assert val.source_split == test.source_split == "test"
    assert not set(val.source_index) & set(test.source_index)
    _, val_pool = source_pool("val")
    _, test_pool = source_pool("test")
    assert not set(val_pool) & set(test_pool)
    assert len(val_pool) + len(test_pool) == 10_000
    assert set(val.source_index) <= set(val_pool)
    assert set(test.source_index) <= set(test_pool)


def test_same_seed_same_canvases_other_seed_other_canvases() -> None:
    first, again, other = (generate_split("val", 20, seed=s) for s in (5, 5, 6))
    assert np.array_equal(first.images, again.images)
    assert np.array_equal(first.boxes, again.boxes)
    assert not np.array_equal(first.images, other.images)


def test_background_has_texture_and_noise() -> None:
    split = generate_split("val", 20, seed=0)
    for index in range(len(split)):
        boxes, _ = split.objects_of(index)
        free = np.ones(split.images.shape[1:], bool)
        for x1, y1, x2, y2 in boxes.astype(int):
            free[y1:y2, x1:x2] = False
        assert split.images[index][free].std() > 1.0


def test_coco_json_loads_in_pycocotools_and_round_trips(tmp_path) -> None:  # noqa: ANN001
    split = generate_split("test", 30, seed=2)
    save_split(split, tmp_path / "test")
    coco = COCO(str(tmp_path / "test" / ANNOTATIONS_FILE))
    assert len(coco.getImgIds()) == 30
    assert len(coco.getAnnIds()) == len(split.labels)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(split.classes)
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    boxes, labels = split.objects_of(0)
    xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes.tolist()]
    assert sorted(a["bbox"] for a in first) == sorted(xywh)
    assert sorted(a["category_id"] - 1 for a in first) == sorted(labels.tolist())
    loaded = load_split(tmp_path / "test")
    assert np.array_equal(loaded.images, split.images)
    assert np.array_equal(loaded.boxes, split.boxes)
    assert np.array_equal(loaded.labels, split.labels)
    assert to_coco(loaded)["annotations"] == to_coco(split)["annotations"]


def test_padded_boxes_put_each_object_in_its_canvas_row() -> None:
    split = generate_split("val", 10, seed=0)
    boxes, labels = split.padded(6)
    for index in range(len(split)):
        own_boxes, own_labels = split.objects_of(index)
        count = len(own_labels)
        assert np.array_equal(boxes[index, :count], own_boxes)
        assert np.array_equal(labels[index, :count], own_labels)
        assert (labels[index, count:] == -1).all()


def test_bad_specs_and_splits_are_rejected(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="objects per canvas"):
        CanvasSpec(min_objects=3, max_objects=2)
    with pytest.raises(ConfigError, match="item scale"):
        CanvasSpec(size=32, max_scale=48)
    with pytest.raises(ConfigError, match="unknown detection split 'dev'"):
        generate_split("dev", 1)
    with pytest.raises(ConfigError, match="not a detection split directory"):
        load_split(tmp_path)


def test_head_keeps_the_first_canvases_with_their_objects() -> None:
    split = generate_split("val", 10, seed=0)
    head = split.head(4)
    assert len(head) == 4
    assert set(head.image_index.tolist()) == {0, 1, 2, 3}
    for index in range(4):
        assert np.array_equal(head.objects_of(index)[0], split.objects_of(index)[0])

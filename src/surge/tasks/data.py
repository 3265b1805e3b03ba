"""What a task reads: training splits as tensors, evaluation sets as arrays, and the dataset
readers that make them (registered by name, or a `package.module:function` returning one)."""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from surge.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Split:
    """Inputs [N, ...] and their targets [N, ...] as the task's loss takes them (class ids,
    packed boxes, regression targets)."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DataOptions:
    """How much of a dataset to read, and from where (a recipe's `data` section)."""

    root: Path | None = None
    """Directory the dataset reads from; None = the reader's own default."""
    train_size: int | None = None
    """Use only this many training samples (generated datasets: make this many)."""
    test_size: int | None = None
    """Use only this many validation samples (generated datasets: make this many)."""
    classes: int = 10
    """Generated datasets: number of classes."""
    input_shape: tuple[int, ...] = ()
    """One sample's input shape (generated datasets draw inputs of this shape)."""
    seed: int = 0


@dataclass
class EvalDataset:
    """Model inputs (dim 0 = sample) and the targets that score the outputs."""

    name: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None  # per-sample targets: class ids [N], regression values, ...
    class_names: list[str] | None = None
    ground_truth: dict[str, Any] | None = None  # COCO JSON, for tasks scored on boxes
    image_ids: np.ndarray | None = None  # COCO image id of each sample

    def __post_init__(self) -> None:
        sizes = {name: len(array) for name, array in self.inputs.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ConfigError(f"dataset {self.name!r}: inputs need one common length, got {sizes}")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, count: int) -> EvalDataset:
        """The first `count` samples (for quick evaluations in a time budget)."""
        image_ids = None if self.image_ids is None else self.image_ids[:count]
        ground_truth = self.ground_truth
        if ground_truth is not None and image_ids is not None:
            ground_truth = coco_subset(ground_truth, {int(i) for i in image_ids})
        return EvalDataset(
            self.name, {k: v[:count] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:count], self.class_names,
            ground_truth, image_ids,
        )


def coco_subset(ground_truth: dict[str, Any], keep: set[int]) -> dict[str, Any]:
    """COCO ground truth restricted to the images in `keep`: images left out would otherwise
    count as missed objects and pull mAP down."""
    return {
        **ground_truth,
        "images": [im for im in ground_truth.get("images", []) if im["id"] in keep],
        "annotations": [a for a in ground_truth.get("annotations", []) if a["image_id"] in keep],
    }


class Dataset(ABC):
    """A dataset reader: training splits for `surge train`, an evaluation set for `surge tune`,
    `surge.evaluate` and the optimizer's checks. A reader needs to offer only what it has."""

    name: str = "dataset"

    def check(self, options: DataOptions) -> None:  # noqa: B027  (optional: most need none)
        """Raise ConfigError (one line) when the data is not there, before any process starts."""

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        """(train, validation) splits as tensors."""
        raise ConfigError(f"dataset {self.name!r} has no training splits")

    @abstractmethod
    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        """The held-out samples, keyed by the model's input name for one-input datasets."""


def limit(split: Split, size: int | None) -> Split:
    """The first `size` samples of `split` (all of them when None)."""
    return split if size is None else Split(split.inputs[:size], split.labels[:size])


class NpzDataset(Dataset):
    """An .npz of input arrays (by input name) plus `labels`; or, for box-scored tasks, plus
    `image_ids`, with the COCO ground truth in a .json of the same name beside it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = self.path.stem

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        import json

        with self.path.open("rb") as file, np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        labels = arrays.pop("labels", None)
        image_ids = arrays.pop("image_ids", None)
        ground_truth = None
        if image_ids is not None:
            gt_path = self.path.with_suffix(".json")
            if not gt_path.is_file():
                raise ConfigError(f"{self.path} has image_ids but no COCO ground truth at {gt_path}")
            ground_truth = json.loads(gt_path.read_text())
        return EvalDataset(self.name, arrays, labels, None, ground_truth, image_ids)


def memory_bytes() -> int:
    """This machine's physical memory (unknown: no limit)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _gib(count: int) -> str:
    return f"{count / 2**30:,.1f} GiB"


def check_generated_size(key: str, count: int, sample_bytes: int, what: str) -> None:
    """Refuse `count` generated samples of `sample_bytes` each that could not fit in this
    machine's memory, before any is drawn: the allocator's own failure is a traceback."""
    memory = memory_bytes()
    if count * sample_bytes > memory:
        raise ConfigError(
            f"{key} {count:,}: {_gib(count * sample_bytes)} of {what}, more than this "
            f"machine's {_gib(memory)} of memory; give at most {memory // sample_bytes:,}")


class SyntheticDataset(Dataset):
    """A learnable classification task for tests: labels are the argmax of a fixed random linear
    map of uniform inputs."""

    name = "synthetic"

    def check(self, options: DataOptions) -> None:
        """Sizes whose splits could not be drawn in memory (inputs, the centred copy and the
        logits of the labels' map, float32; int64 labels) are refused."""
        features = math.prod(options.input_shape)  # np.prod would wrap round past int64
        shape = list(options.input_shape)
        teacher = 4 * features * options.classes
        if teacher > memory_bytes():
            raise ConfigError(
                f"model.input_shape {shape} with data.classes {options.classes:,}: the "
                f"synthetic labels' linear map needs {_gib(teacher)}, more than this "
                f"machine's {_gib(memory_bytes())} of memory; lower either")
        sample = 8 * features + 4 * options.classes + 8
        what = f"samples of model.input_shape {shape}"
        check_generated_size("data.train_size", options.train_size or 256, sample, what)
        check_generated_size("data.test_size", options.test_size or 128, sample, what)

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        import torch

        self.check(options)
        generator = torch.Generator().manual_seed(options.seed + 1234)
        features = int(np.prod(options.input_shape))
        teacher = torch.randn(features, options.classes, generator=generator)
        splits = []
        for size in (options.train_size or 256, options.test_size or 128):
            inputs = torch.rand(size, *options.input_shape, generator=generator)
            labels = ((inputs.reshape(size, -1) - 0.5) @ teacher).argmax(dim=1)
            splits.append(Split(inputs, labels))
        return splits[0], splits[1]

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        test = self.training(options)[1]
        return EvalDataset(self.name, {input_name: test.inputs.numpy()}, test.labels.numpy())

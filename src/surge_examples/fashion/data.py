"""Fashion-MNIST from the IDX files of Debian's `dataset-fashion-mnist` package, and its reader
for the library (dataset `fashion-mnist`: train/test splits, the test split for evaluation)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from surge.errors import ConfigError, SurgeError
from surge.tasks import DataOptions, Dataset, EvalDataset, Split

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def dataset_dir() -> Path:
    return Path(os.environ.get("SURGE_FASHION_MNIST_DIR", str(DEFAULT_DIR)))


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file: magic (0, 0, dtype code, ndim), big-endian int32 dims, then data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SurgeError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SurgeError(f"{path}: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(tuple(dims))


def load_fashion_mnist(split: str = "train", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 [N, 28, 28] and labels as int64 [N] for split 'train' (60k) or 'test' (10k)."""
    if split not in _FILES:
        raise SurgeError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    root = Path(root) if root else dataset_dir()
    image_file, label_file = (root / name for name in _FILES[split])
    if not image_file.exists():
        raise SurgeError(
            f"{image_file} not found: install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or set SURGE_FASHION_MNIST_DIR"
        )
    images = _read_idx(image_file)
    labels = _read_idx(label_file).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise SurgeError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1], the default model's input."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


class FashionMnist(Dataset):
    """Images as the default model takes them, FP32 [N, 1, 28, 28] in [0, 1], and class ids."""

    name = "fashion-mnist"

    def check(self, options: DataOptions) -> None:
        root = Path(options.root) if options.root else dataset_dir()
        missing = [name for pair in _FILES.values() for name in pair if not (root / name).is_file()]
        if missing:
            raise ConfigError(f"data.root {str(root)!r}: Fashion-MNIST file {missing[0]} not found")

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        import torch

        splits = []
        for name, size in (("train", options.train_size), ("test", options.test_size)):
            images, labels = load_fashion_mnist(name, options.root)
            images, labels = images[:size], labels[:size]
            splits.append(Split(torch.from_numpy(to_model_input(images)), torch.from_numpy(labels)))
        return splits[0], splits[1]

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        images, labels = load_fashion_mnist("test", options.root)
        return EvalDataset(self.name, {input_name: to_model_input(images)}, labels,
                           list(FASHION_CLASSES))

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from surge.errors import SurgeError
from surge_examples.fashion.data import load_fashion_mnist, to_model_input


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_reads_idx_files(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 9]))
    got_images, got_labels = load_fashion_mnist("test", root=tmp_path)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.tolist() == [1, 2, 9]
    assert to_model_input(got_images).shape == (3, 1, 28, 28)


def test_real_dataset_sizes() -> None:
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    assert train_images.shape == (60000, 28, 28)
    assert test_images.shape == (10000, 28, 28)
    assert set(np.unique(train_labels)) == set(range(10))
    assert len(test_labels) == 10000


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SurgeError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(SurgeError, match="unknown Fashion-MNIST split 'val'"):
        load_fashion_mnist("val")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(SurgeError, match="not an unsigned-byte IDX file"):
        load_fashion_mnist("test", root=tmp_path)

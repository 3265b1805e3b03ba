"""Static int8 calibration rows for models served with one input per feature column: training
packs the columns into one tensor, so the rows are split back into the served inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from surge.optimize.pipeline import _calibration_rows
from surge.tasks import Split, get_task
from surge.tasks.tabular import Column, pack

COLUMNS = (Column("user", "INT64"), Column("dense", "FP32", 2))


@dataclass
class ColumnReader:
    columns: tuple[Column, ...] = COLUMNS


class PackedReader:
    """A dataset whose model takes the packed tensor itself."""


def _split(rows: int) -> Split:
    user = np.arange(rows, dtype=np.int64)
    dense = np.stack([np.linspace(0, 1, rows), np.linspace(1, 2, rows)], 1).astype(np.float32)
    packed = torch.from_numpy(pack(COLUMNS, {"user": user, "dense": dense}))
    return Split(packed, torch.zeros(rows))


def test_packed_training_rows_become_one_calibration_input_per_column() -> None:
    rows = _calibration_rows(get_task("ranking"), ColumnReader(), _split(40), "user")
    assert sorted(rows) == ["dense", "user"]
    assert rows["user"].dtype == np.int64
    assert rows["user"].shape == (40,)
    assert rows["dense"].dtype == np.float32
    assert rows["dense"].shape == (40, 2)
    # the same training rows, column by column
    np.testing.assert_allclose(rows["dense"][:, 1] - rows["dense"][:, 0], np.ones(40), atol=1e-6)
    np.testing.assert_array_equal(rows["user"], np.arange(40))


def test_a_dataset_without_columns_keeps_its_single_packed_input() -> None:
    rows = _calibration_rows(get_task("ranking"), PackedReader(), _split(40), "features")
    assert list(rows) == ["features"]
    assert rows["features"].shape == (40, 3)

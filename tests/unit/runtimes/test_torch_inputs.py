"""A torch module that changes its input in place changes a copy: an in-process instance is
handed a request's own arrays, which may lie in a client's shared-memory region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surge.errors import InputError
from surge.runtimes.base import Signature, TensorSpec, run_rows
from surge.runtimes.torch_runner import _TorchRunnerBase


class _DoubleInPlace(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2)


class _Runner(_TorchRunnerBase):
    def __init__(self) -> None:
        self._signature = Signature((TensorSpec("x", "FP32", (-1, 4)),),
                                    (TensorSpec("y", "FP32", (-1, 4)),), batched=True)
        self._module = _DoubleInPlace()
        self._device = torch.device("cpu")


def test_a_read_only_input_is_copied_before_the_module_changes_it() -> None:
    client = bytearray(np.arange(4, dtype=np.float32).tobytes())
    source = np.frombuffer(memoryview(client).toreadonly(), np.float32).reshape(1, 4)
    outputs = _Runner().run({"x": source})
    np.testing.assert_array_equal(outputs["y"], [[0, 2, 4, 6]])
    np.testing.assert_array_equal(np.frombuffer(client, np.float32), [0, 1, 2, 3])


def test_a_writable_input_is_handed_over_as_it_is() -> None:
    """A worker's slot: no copy."""
    slot = np.arange(4, dtype=np.float32).reshape(1, 4)
    _Runner().run({"x": slot})
    np.testing.assert_array_equal(slot, [[0, 2, 4, 6]])


class _Table(_TorchRunnerBase):
    """An embedding table of 4 rows: ids in, vectors out."""

    def __init__(self) -> None:
        self._signature = Signature((TensorSpec("id", "INT64", (-1,)),),
                                    (TensorSpec("y", "FP32", (-1, 2)),), batched=True)
        self._module = torch.nn.Embedding(4, 2)
        self._device = torch.device("cpu")


def test_an_id_past_the_table_is_bad_input_and_its_batch_mates_are_answered() -> None:
    """torch's "index out of range in self" is the input's (a 400), so `run_rows` finds the
    poisoned rows and computes the others (the whole batch failed with 500)."""
    table = _Table()
    with pytest.raises(InputError, match="PyTorch refused the input: index out of range"):
        table.run({"id": np.array([9], np.int64)})
    ran = run_rows(table, {"id": np.array([0, 9, 3, -2, 1], np.int64)})
    assert [row for row, _ in ran.rejected] == [1, 3]
    expected = table.run({"id": np.array([0, 3, 1], np.int64)})["y"]
    np.testing.assert_array_equal(ran.outputs["y"][[0, 2, 4]], expected)


def test_the_modules_own_index_errors_stay_its_own() -> None:
    class Buggy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[[0, 1, 2][5]]

    runner = _Runner()
    runner._module = Buggy()
    with pytest.raises(IndexError, match="list index out of range"):
        runner.run({"x": np.zeros((1, 4), np.float32)})

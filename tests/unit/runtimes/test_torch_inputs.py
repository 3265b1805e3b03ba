"""A torch module that changes its input in place changes a copy: an in-process instance is
handed a request's own arrays, which may lie in a client's shared-memory region."""

from __future__ import annotations

import numpy as np
import torch

from surge.runtimes.base import Signature, TensorSpec
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

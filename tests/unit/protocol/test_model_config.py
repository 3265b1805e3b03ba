"""The Triton-style model configuration says where the instances actually run."""

from __future__ import annotations

import pytest

from surge.engine import ModelHandle
from surge.protocol.metadata import model_config
from surge.repository.config import ModelConfig
from surge.runtimes.base import Signature, TensorSpec

SIGNATURE = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 2)),),
                      batched=True, max_batch_size=8, platform="onnxruntime_onnx")


@pytest.mark.parametrize(("device", "reported", "kind"), [
    ("auto", ("cpu", "cpu"), "KIND_CPU"),
    ("auto", ("cuda:0", "cuda:0"), "KIND_GPU"),  # auto resolved to the GPU in the workers
    ("cuda", (), "KIND_GPU"),
    ("cpu", ("cpu",), "KIND_CPU"),
])
def test_instance_group_kind_follows_the_workers_devices(device: str, reported: tuple[str, ...],
                                                         kind: str) -> None:
    config = ModelConfig(name="m", device=device, instances=2, max_batch_size=8)
    handle = ModelHandle("m", 1, (1,), config, SIGNATURE, SIGNATURE.platform, reported)
    group = model_config(handle)["instance_group"]
    assert group == [{"name": "m", "kind": kind, "count": 2}]

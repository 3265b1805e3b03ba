"""Models for the server tests: an ONNX adder with FP32 and INT64 tensors, a slow torch model.

`slow_double` is loaded by worker processes through `engine: torch_factory`; the server
subprocess gets this directory on PYTHONPATH so that `models:slow_double` resolves.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file


def tiny_onnx(path: Path) -> Path:
    """y = x + 1 on FP32 [-1, 4]; m = 2n on INT64 [-1, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    m = helper.make_tensor_value_info("m", TensorProto.INT64, ["batch", 3])
    nodes = [helper.make_node("Add", ["x", "one"], ["y"]),
             helper.make_node("Mul", ["n", "two"], ["m"])]
    graph = helper.make_graph(nodes, "tiny", [x, n], [y, m], [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(2, np.int64), "two"),
    ])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class SlowDouble(torch.nn.Module):
    """y = 2x after sleeping `delay_ms` per batch: a compute time that does not depend on load."""

    def __init__(self, delay_ms: float = 50.0) -> None:
        super().__init__()
        self.delay_s = delay_ms / 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return x * 2


def slow_double(delay_ms: float = 50.0) -> SlowDouble:
    return SlowDouble(delay_ms)


def slow_to_load(load_s: float = 60.0) -> SlowDouble:
    """A model whose load takes `load_s`: the worker sits in this call meanwhile."""
    time.sleep(load_s)
    return SlowDouble(0.0)


def stalls_when(marker: str, load_s: float = 60.0) -> SlowDouble:
    """Loads at once, unless the file `marker` exists: then its load takes `load_s` (a
    reload that hangs where the first load did not)."""
    if Path(marker).exists():
        time.sleep(load_s)
    return SlowDouble(0.0)


def write_slow_to_load(root: Path, load_s: float, module: str = "models") -> Path:
    """Model `late` of repository `root`, built by `slow_to_load` (imported as `module`: the
    workers of a server started with this directory on PYTHONPATH find it as `models`)."""
    (root / "late" / "1").mkdir(parents=True)
    save_file({}, str(root / "late" / "1" / "model.safetensors"))
    (root / "late" / "config.yaml").write_text(
        f"engine: torch_factory\nfactory: {module}:slow_to_load\n"
        f"factory_kwargs: {{load_s: {load_s}}}\n"
        "inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n"
        "outputs: [{name: output, datatype: FP32, shape: [-1, 4]}]\n")
    return root


TINY_CONFIG = """\
max_batch_size: 8
instances: 1
threads: 1
batching: {max_queue_delay_ms: 1.0}
"""

SLOW_CONFIG = """\
engine: torch_factory
factory: models:slow_double
factory_kwargs: {{delay_ms: {delay_ms}}}
inputs: [{{name: x, datatype: FP32, shape: [-1, 4]}}]
outputs: [{{name: output, datatype: FP32, shape: [-1, 4]}}]
max_batch_size: {max_batch}
instances: {instances}
threads: 1
batching: {{max_queue_delay_ms: 1.0}}
queue: {{max_size: {queue}}}
"""


def make_repository(root: Path, *, slow_delay_ms: float = 50.0, slow_queue: int = 4,
                    slow_max_batch: int = 2, slow_instances: int = 1, with_slow: bool = True,
                    with_tiny: bool = True) -> Path:
    if with_tiny:
        tiny_onnx(root / "tiny" / "1" / "model.onnx")
        (root / "tiny" / "config.yaml").write_text(TINY_CONFIG)
    if with_slow:
        (root / "slow" / "1").mkdir(parents=True)
        save_file({}, str(root / "slow" / "1" / "model.safetensors"))
        (root / "slow" / "config.yaml").write_text(SLOW_CONFIG.format(
            delay_ms=slow_delay_ms, queue=slow_queue, max_batch=slow_max_batch,
            instances=slow_instances))
    return root

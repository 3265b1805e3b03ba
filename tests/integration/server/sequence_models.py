"""A tiny recurrent model for the sequence batcher's tests: `y = state_in + x`, `state_out = y`
on FP32 [-1, 2], so that each answer is the running sum of its sequence's inputs (the state
went from one request to the next)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

ACCUMULATOR_CONFIG = """\
max_batch_size: 8
instances: 1
threads: 1
batching: {max_queue_delay_ms: 5}
sequence_batching:
  max_sequence_idle_ms: 60000
  max_sequences: 3
  state: [{input: state_in, output: state_out}]
"""


def accumulator_onnx(path: Path) -> Path:
    """The running-sum model as ONNX (batch dim symbolic: sequences batch together)."""
    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2])

    nodes = [helper.make_node("Add", ["state_in", "x"], ["y"]),
             helper.make_node("Identity", ["y"], ["state_out"])]
    graph = helper.make_graph(nodes, "accumulator", [tensor("x"), tensor("state_in")],
                              [tensor("y"), tensor("state_out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def accumulator_repository(root: Path, name: str = "acc", config: str = ACCUMULATOR_CONFIG
                           ) -> Path:
    accumulator_onnx(root / name / "1" / "model.onnx")
    (root / name / "config.yaml").write_text(config)
    return root

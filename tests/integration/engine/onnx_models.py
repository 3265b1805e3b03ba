"""Tiny ONNX models built with onnx.helper (no torch import: fast to make in every test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def affine(path: Path, features: int = 4) -> Path:
    """y = 2x + 1 on FP32 [-1, features]; also z = sum(x) per row, FP32 [-1, 1]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 1])
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "one"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["z"], keepdims=1),
    ]
    graph = helper.make_graph(nodes, "affine", [x], [y, z], [two, one, axes])
    return _save(graph, path)


def slow(path: Path, width: int = 512, depth: int = 24) -> Path:
    """y = tanh(x W)^depth on FP32 [-1, width]: compute time grows with batch and depth."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    nodes, previous = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [previous, "w"], [f"m{i}"]))
        out = "y" if i == depth - 1 else f"t{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        previous = out
    graph = helper.make_graph(nodes, "slow", [x], [y], [numpy_helper.from_array(weight, "w")])
    return _save(graph, path)


def image_sum(path: Path, side: int = 8) -> Path:
    """total = the sum of each image's pixels: FP32 [-1, side, side] -> FP32 [-1]."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", side, side])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    nodes = [helper.make_node("ReduceSum", ["image", "axes"], ["total"], keepdims=0)]
    return _save(helper.make_graph(nodes, "image_sum", [x], [total], [axes]), path)


def counting_loop(path: Path) -> Path:
    """y = n + max(n) on INT64 [-1], counted one by one in a Loop of max(n) iterations: a
    batch of n = 10**15 computes for years (ONNX Runtime checks its terminate flag between
    iterations)."""
    n = helper.make_tensor_value_info("n", TensorProto.INT64, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch"])
    body = helper.make_graph(
        [helper.make_node("Add", ["count_in", "one"], ["count_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "count",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_in", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_out", TensorProto.INT64, ["batch"])],
        [numpy_helper.from_array(np.array(1, np.int64), "one")])
    nodes = [helper.make_node("ReduceMax", ["n"], ["trips"], keepdims=0),
             helper.make_node("Loop", ["trips", "", "n"], ["y"], body=body)]
    return _save(helper.make_graph(nodes, "counting_loop", [n], [y]), path)


def make_repo(root: Path, models: dict[str, tuple[str, str]]) -> Path:
    """models: name -> (kind 'affine' | 'slow' | 'image_sum' | 'loop', config.yaml text);
    version 1."""
    builders = {"affine": affine, "slow": slow, "image_sum": image_sum, "loop": counting_loop}
    for name, (kind, config) in models.items():
        builders[kind](root / name / "1" / "model.onnx")
        (root / name / "config.yaml").write_text(config)
    return root

"""A quantized model's int8 weights served as uint8 on a CPU without VNNI: the same values, the
same answers, no saturation; graphs the shift cannot vouch for, and models with no integer
operator, left as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from surge.optimize import Int8DynamicConfig, Int8StaticConfig, quantize
from surge.platform import lacks_vnni
from surge.runtimes import RunnerOptions, int8_weights, load_runner
from surge.runtimes.int8_weights import served_bytes, shift_int8_weights
from tests.unit.optimize.models import MLP, image_source, seeded, vector_source

# What a VNNI CPU makes: int8 weights.
MADE = {"static": lambda: Int8StaticConfig(weight_uint8=False),
        "dynamic": lambda: Int8DynamicConfig(weight_uint8=False)}


def _variant(tmp_path: Path, kind: str) -> tuple[Path, Any]:
    source = (image_source(tmp_path) if kind == "static"
              else vector_source(tmp_path, seeded(MLP())))
    return quantize(source, MADE[kind](), tmp_path / kind).path, source


# operator -> its weight's input, its zero point's, and the axis a per-channel zero point runs on
_SLOTS = {"DequantizeLinear": (0, 2, 0), "MatMulInteger": (1, 3, 1)}


def _weights(graph: Any) -> dict[str, np.ndarray]:
    """Each integer weight's values less its zero point, by the weight's name."""
    tensors = {t.name: numpy_helper.to_array(t).astype(np.int32) for t in graph.initializer}
    values = {}
    for node in graph.node:
        if node.op_type not in _SLOTS:
            continue
        weight, zero, axis = _SLOTS[node.op_type]
        if node.input[weight] not in tensors or tensors[node.input[weight]].ndim < 2:
            continue  # an activation, or a bias
        w, z = tensors[node.input[weight]], tensors[node.input[zero]]
        shape = [-1 if dim == axis else 1 for dim in range(w.ndim)] if z.ndim else []
        values[node.input[weight]] = w - z.reshape(shape)
    return values


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_the_shifted_weights_hold_the_same_values(tmp_path: Path, kind: str) -> None:
    path, _ = _variant(tmp_path, kind)
    model = onnx.load(str(path))
    before = _weights(model.graph)
    assert before
    assert all(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer
                          if t.name in before)
    assert shift_int8_weights(model.graph) == len(before)
    after = _weights(model.graph)
    assert after.keys() == before.keys()
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values)
    shifted = {t.name: t.data_type for t in model.graph.initializer if t.name in before}
    assert set(shifted.values()) == {onnx.TensorProto.UINT8}


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_a_cpu_without_vnni_serves_them_as_uint8_and_answers_closer(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 weights on such a CPU: a tiny CNN's outputs came out 3.5 off on a scale of 19."""
    path, source = _variant(tmp_path, kind)
    reference = next(iter(source.reference_outputs().values()))
    inputs = source.samples

    def error(vnni_lacking: bool) -> float:
        monkeypatch.setattr(int8_weights, "lacks_vnni", lambda: vnni_lacking)
        runner = load_runner(path, RunnerOptions(intra_op_threads=1))
        return float(np.abs(next(iter(runner.run(inputs).values())) - reference).max())

    scale = float(np.abs(reference).max())
    served = error(True)
    assert served < 0.1 * scale, (served, scale)
    if lacks_vnni():  # here the file as it is saturates
        assert served < error(False)


def test_int8_activations_and_shared_zero_points_are_left_alone(tmp_path: Path) -> None:
    """uint8 weights beside int8 activations have no kernel; a zero point also read by another
    operator would change its meaning there."""
    source = image_source(tmp_path)
    int8 = quantize(source, Int8StaticConfig(weight_uint8=False, activation_uint8=False),
                    tmp_path / "s8")
    assert shift_int8_weights(onnx.load(str(int8.path)).graph) == 0
    path, _ = _variant(tmp_path, "dynamic")
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "MatMulInteger")
    model.graph.node.append(onnx.helper.make_node("Identity", [node.input[3]], ["seen"]))
    assert shift_int8_weights(model.graph) == 0


def test_a_model_without_integer_operators_is_not_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = image_source(tmp_path)
    monkeypatch.setattr(int8_weights, "lacks_vnni", lambda: True)
    monkeypatch.setattr(onnx, "load", lambda *a, **k: pytest.fail("parsed"))
    assert served_bytes(source.ensure_onnx()) is None
    monkeypatch.setattr(int8_weights, "lacks_vnni", lambda: False)
    assert served_bytes(tmp_path / "any.onnx") is None

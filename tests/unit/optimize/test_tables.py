"""Embedding tables int8 with one scale per row, or fp16, dequantized after the lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from surge.errors import ConfigError
from surge.optimize import Fp16TablesConfig, Int8TablesConfig, parse_variant
from surge.optimize.tables import quantize_rows, shrink_tables

ROWS, DIM = 64, 8


def _table() -> np.ndarray:
    """Rows whose sizes span three orders of magnitude, as rarely and often seen ids do."""
    rng = np.random.default_rng(0)
    sizes = np.logspace(-3, 0, ROWS).reshape(-1, 1)
    return (rng.standard_normal((ROWS, DIM)) * sizes).astype(np.float32)


def _lookup_model(table: np.ndarray) -> onnx.ModelProto:
    """ids INT64 [N] -> Gather(table) -> Mul by 2 -> vectors FP32 [N, DIM]."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup"),
             helper.make_node("Mul", ["rows", "two"], ["vectors"], name="double")]
    graph = helper.make_graph(
        nodes, "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["N", DIM])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, ids: np.ndarray, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"ids": ids})[0])


def test_quantize_rows_by_hand() -> None:
    table = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]], np.float32)
    quantized, scale = quantize_rows(table)
    np.testing.assert_allclose(scale, [[1.0 / 127], [1.0]])
    # 0.5 * 127 = 63.5 rounds to 64 (half to even), 0.25 * 127 = 31.75 to 32
    np.testing.assert_array_equal(quantized, [[64, -127, 32], [0, 0, 0]])
    assert quantized.dtype == np.int8


def test_int8_tables_keep_every_row_to_half_a_step_of_its_own_scale(tmp_path: Path) -> None:
    table = _table()
    model = _lookup_model(table)
    details = shrink_tables(model, Int8TablesConfig())
    onnx.checker.check_model(model)
    assert details == {"tables": ["table"], "table_bytes": ROWS * DIM * 4,
                       "stored_bytes": ROWS * DIM + ROWS * 4}
    stored = {t.name: t.data_type for t in model.graph.initializer}
    assert "table" not in stored  # the FP32 table is gone
    assert stored["table/int8-tables"] == TensorProto.INT8
    ids = np.arange(ROWS, dtype=np.int64)[::-1].copy()
    got = _run(model, ids, tmp_path) / 2.0
    want = table[ids]
    peaks = np.abs(want).max(axis=1, keepdims=True)
    # per-row scales: even the smallest rows keep 8 bits; one scale for the whole table would
    # have rounded the smallest rows (peak ~1e-3, step 1/127) to zero
    assert (np.abs(got - want) <= 0.5 * peaks / 127 + 1e-7).all()
    assert np.abs(got[-1]).max() > 0


def test_fp16_tables_halve_the_table_and_cast_back(tmp_path: Path) -> None:
    table = _table()
    model = _lookup_model(table)
    details = shrink_tables(model, Fp16TablesConfig())
    assert details["stored_bytes"] == ROWS * DIM * 2
    stored = {t.name: t.data_type for t in model.graph.initializer}
    assert stored == {"table/fp16-tables": TensorProto.FLOAT16, "two": TensorProto.FLOAT}
    ids = np.array([0, 5, 63, 5], np.int64)
    got = _run(model, ids, tmp_path)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got / 2.0, table[ids], rtol=1e-3, atol=1e-7)


def test_small_tables_and_models_without_tables() -> None:
    with pytest.raises(ConfigError, match="no embedding table"):
        shrink_tables(_lookup_model(_table()[:8]), Int8TablesConfig())  # below min_rows 16
    details = shrink_tables(_lookup_model(_table()[:8]), Int8TablesConfig(min_rows=4))
    assert details["tables"] == ["table"]
    with pytest.raises(ConfigError, match="min_rows must be at least 1"):
        Fp16TablesConfig(min_rows=0)


def test_table_variants_have_names() -> None:
    assert parse_variant("int8-tables") == Int8TablesConfig()
    assert parse_variant("fp16-tables") == Fp16TablesConfig()
    assert Int8TablesConfig().variant_name() == "int8-tables"

"""Smaller embedding tables: int8 with one scale per row, or fp16, dequantized after the lookup.

An embedding table is a `Gather` whose data is a float initializer [rows, dim]. ONNX Runtime's
dynamic int8 leaves it FP32 (it quantizes MatMul and Gemm weights), and its static QDQ int8
gives the whole table one scale (and quantizes every activation): on a CTR model that ranked
candidates as badly as random scores. Rows of rarely seen ids stay small, so one scale per table
leaves them few levels; here each row gets its own scale (max |row| / 127), and the graph gathers
the int8 rows and their scales and multiplies, so only the looked-up rows are dequantized:

    Gather(table) -> rows                    becomes
    Gather(table_q int8) -> Cast -> Mul(Gather(scale [rows, 1])) -> rows

Plain ONNX operators (Gather, Cast, Mul), so any runtime serves the result; the MLP is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from surge.errors import ConfigError
from surge.optimize.registry import Artifact, OptimizeConfig, register
from surge.optimize.source import ModelSource

if TYPE_CHECKING:
    import onnx

INT8_MAX = 127


class TablesConfig(OptimizeConfig):
    """Base of the embedding-table formats (made by `quantize`)."""

    verb = "quantize"


@dataclass(frozen=True)
class Int8TablesConfig(TablesConfig):
    """Embedding tables int8, one FP32 scale per row; the rest of the model as it was."""

    format: ClassVar[str] = "int8-tables"
    min_rows: int = 16
    """Tables with fewer rows stay FP32 (their bytes do not matter)."""

    def __post_init__(self) -> None:
        if self.min_rows < 1:
            raise ConfigError(f"min_rows must be at least 1, got {self.min_rows}")


@dataclass(frozen=True)
class Fp16TablesConfig(TablesConfig):
    """Embedding tables FP16, cast to FP32 after the lookup; the rest of the model as it was."""

    format: ClassVar[str] = "fp16-tables"
    min_rows: int = 16
    """Tables with fewer rows stay FP32."""

    def __post_init__(self) -> None:
        if self.min_rows < 1:
            raise ConfigError(f"min_rows must be at least 1, got {self.min_rows}")


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (int8 [rows, dim], FP32 scales [rows, 1]); an all-zero row gets
    scale 1 so that it dequantizes to zeros, not NaN."""
    peak = np.abs(table).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(table / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scale


def table_gathers(model: onnx.ModelProto, min_rows: int) -> list[tuple[Any, np.ndarray]]:
    """(Gather node, its FP32 table) for each lookup into a float initializer of >= min_rows rows
    along axis 0."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = numpy_helper.to_array(inits[node.input[0]])
        if axis == 0 and table.ndim == 2 and table.dtype == np.float32 and len(table) >= min_rows:
            found.append((node, table))
    return found


def _lookup_nodes(node: Any, data: str, scale: str | None) -> list[Any]:
    """The lookup of `node` from the stored table `data` (and its row scales), back to FP32."""
    from onnx import TensorProto, helper

    stem, ids, out = node.name or node.output[0], node.input[1], node.output[0]
    nodes = [helper.make_node("Gather", [data, ids], [f"{stem}/stored"], name=f"{stem}/stored"),
             helper.make_node("Cast", [f"{stem}/stored"], [f"{stem}/fp32" if scale else out],
                              to=TensorProto.FLOAT, name=f"{stem}/cast")]
    if scale is not None:
        nodes += [helper.make_node("Gather", [scale, ids], [f"{stem}/scale"],
                                   name=f"{stem}/row_scale"),
                  helper.make_node("Mul", [f"{stem}/fp32", f"{stem}/scale"], [out],
                                   name=f"{stem}/dequantize")]
    return nodes


def shrink_tables(model: onnx.ModelProto, config: TablesConfig) -> dict[str, Any]:
    """Rewrite `model`'s table lookups in place; returns what was changed."""
    from onnx import numpy_helper

    int8 = isinstance(config, Int8TablesConfig)
    found = table_gathers(model, getattr(config, "min_rows", 1))
    if not found:
        raise ConfigError(f"{config.format}: the model has no embedding table (a Gather from a "
                          "float initializer of at least min_rows rows)")
    graph, replaced, before, after = model.graph, {}, 0, 0
    for node, table in found:
        name = node.input[0]
        if name not in replaced:
            data, scale = quantize_rows(table) if int8 else (table.astype(np.float16), None)
            graph.initializer.append(numpy_helper.from_array(data, f"{name}/{config.format}"))
            if scale is not None:
                graph.initializer.append(numpy_helper.from_array(scale, f"{name}/scale"))
            replaced[name] = scale is not None
            before += table.nbytes
            after += data.nbytes + (0 if scale is None else scale.nbytes)
        index = list(graph.node).index(node)
        scale_name = f"{name}/scale" if replaced[name] else None
        for offset, new in enumerate(_lookup_nodes(node, f"{name}/{config.format}", scale_name)):
            graph.node.insert(index + 1 + offset, new)
        graph.node.remove(node)
    _drop_unused(model, set(replaced))
    return {"tables": sorted(replaced), "table_bytes": before, "stored_bytes": after}


def _drop_unused(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the FP32 tables nothing reads any more."""
    read = {i for n in model.graph.node for i in n.input}
    for tensor in [t for t in model.graph.initializer if t.name in names and t.name not in read]:
        model.graph.initializer.remove(tensor)


def _make(source: ModelSource, config: TablesConfig, out_dir: Path) -> Artifact:
    import onnx

    model = onnx.load(str(source.ensure_onnx()))
    details = shrink_tables(model, config)
    onnx.checker.check_model(model)
    output = out_dir / "model.onnx"
    onnx.save(model, str(output))
    return Artifact(output, "onnxruntime", details)


register(Int8TablesConfig)(_make)
register(Fp16TablesConfig)(_make)

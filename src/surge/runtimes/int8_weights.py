"""A quantized ONNX model's int8 weights served as uint8 on x86 CPUs without VNNI.

There ONNX Runtime multiplies uint8 activations by int8 weights with an instruction whose 16-bit
sums saturate (`surge.platform.lacks_vnni`): a variant quantized on a VNNI CPU, served on one
without, answered with less accuracy than its `variant.yaml` records (the finance example's
`credit-mlp` scored an AUC of 0.779 against 0.831). Each such weight, and its zero point, is
shifted by 128 to uint8 as the model loads: (w + 128) - (z + 128) is w - z, the same value, and
ONNX Runtime's uint8 x uint8 kernels do not saturate. Only weights whose every use is a weight
(or weight zero point) input of an integer operator, beside uint8 activations, are shifted.
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path
from typing import Any

import numpy as np

from surge.platform import lacks_vnni

log = logging.getLogger(__name__)

# operator -> (weight, weight zero point, activation zero point) input positions (-1: none)
_WEIGHT_INPUTS = {
    "MatMulInteger": (1, 3, 2),
    "ConvInteger": (1, 3, 2),
    "QLinearMatMul": (3, 5, 2),
    "QLinearConv": (3, 5, 2),
    "DequantizeLinear": (0, 2, -1),  # QDQ: the weight's own DequantizeLinear
}
_INT8, _UINT8 = 3, 2  # onnx.TensorProto.INT8, UINT8
_GRAPH, _GRAPHS = 5, 10  # onnx.AttributeProto.GRAPH, GRAPHS


def served_bytes(path: Path) -> bytes | None:
    """The model at `path` with its int8 weights as uint8, where this CPU needs it and the
    model has any; None: load the file as it is."""
    if not lacks_vnni() or not _names_integer_ops(path):
        return None
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return None  # its tensors lie beside it: loaded from bytes, they would not be found
    shifted = shift_int8_weights(model.graph)
    if not shifted:
        return None
    log.info("%s: %d int8 weights served as uint8 (this CPU has no VNNI: int8 products "
             "would saturate)", path.name, shifted)
    return bytes(model.SerializeToString())


def _names_integer_ops(path: Path) -> bool:
    """Whether the file names any operator that takes quantized weights (a byte search: most
    models have none, and need not be parsed)."""
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0,
                                                   access=mmap.ACCESS_READ) as data:
            return any(data.find(op.encode()) >= 0 for op in _WEIGHT_INPUTS)
    except (OSError, ValueError):  # empty or unreadable: ONNX Runtime says why
        return False


def shift_int8_weights(graph: Any) -> int:
    """Shift to uint8 the int8 weight initializers of `graph`, and their zero points, where
    every use of each is that slot of an integer operator with uint8 activations; how many
    weights. A graph this cannot vouch for whole (subgraphs, a zero point left to its default,
    a tensor used elsewhere too) is left as it is: 0."""
    if any(a.type in (_GRAPH, _GRAPHS) for node in graph.node for a in node.attribute):
        return 0  # a weight used inside a subgraph would be missed
    tensors = {t.name: t for t in graph.initializer}
    uint8 = _activations_uint8(graph, tensors)
    slots: dict[tuple[int, int], str] = {}  # (node's index, input position) -> weight or zero point
    for index, node in enumerate(graph.node):
        positions = _weight_positions(node, tensors, uint8)
        if positions is None:
            continue
        weight, zero_point = positions
        if len(node.input) <= zero_point or not node.input[zero_point]:
            return 0  # a default zero point: 0 of the weight's type, which would change
        slots[(index, weight)], slots[(index, zero_point)] = "weight", "zero point"
    shifted = {graph.node[i].input[p] for i, p in slots}
    outputs = {o.name for o in graph.output}
    for index, node in enumerate(graph.node):
        for position, name in enumerate(node.input):
            if name in shifted and (index, position) not in slots:
                return 0  # also an input elsewhere
    if shifted & outputs or any(tensors[n].data_type != _INT8 for n in shifted):
        return 0
    for name in shifted:
        _to_uint8(tensors[name])
    return len({graph.node[i].input[p] for (i, p), role in slots.items() if role == "weight"})


def _weight_positions(node: Any, tensors: dict[str, Any], uint8: bool) -> tuple[int, int] | None:
    """(weight, zero point) input positions of `node`, an integer operator whose weight is an
    int8 initializer beside uint8 activations; None for any other node."""
    if node.op_type not in _WEIGHT_INPUTS or node.domain not in ("", "ai.onnx"):
        return None
    weight, zero_point, activation_zero_point = _WEIGHT_INPUTS[node.op_type]
    tensor = tensors.get(node.input[weight]) if len(node.input) > weight else None
    if tensor is None or tensor.data_type != _INT8:
        return None
    if activation_zero_point < 0:  # QDQ: the activations' own QuantizeLinear say
        return (weight, zero_point) if uint8 else None
    if len(node.input) <= activation_zero_point or not node.input[activation_zero_point]:
        return None  # no zero point: the activations' type is not known here
    given = tensors.get(node.input[activation_zero_point])
    if given is not None and given.data_type != _UINT8:
        return None  # int8 activations: no kernel takes uint8 weights beside them
    return weight, zero_point  # a computed zero point: DynamicQuantizeLinear's, uint8


def _activations_uint8(graph: Any, tensors: dict[str, Any]) -> bool:
    """Whether every QuantizeLinear of a QDQ graph makes uint8 (its zero point's type; none:
    uint8)."""
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2]:
            given = tensors.get(node.input[2])
            if given is None or given.data_type != _UINT8:
                return False
    return True


def _to_uint8(tensor: Any) -> None:
    from onnx import numpy_helper

    values = numpy_helper.to_array(tensor).astype(np.int16) + 128
    tensor.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), tensor.name))

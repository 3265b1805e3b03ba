"""Repairs for converted ONNX graphs: constants listed as inputs, a batch fixed at 1."""

from __future__ import annotations

from typing import Any

import numpy as np

BATCH_DIM = "batch"


def drop_initializer_inputs(model: Any) -> None:
    """Weights listed as graph inputs block ONNX Runtime's constant folding and would show up
    in the served signature as inputs a client has to send."""
    weights = {init.name for init in model.graph.initializer}
    kept = [v for v in model.graph.input if v.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)


def _fixed_batch(model: Any) -> int | None:
    firsts = {v.type.tensor_type.shape.dim[0].dim_value if v.type.tensor_type.shape.dim else 0
              for v in (*model.graph.input, *model.graph.output)}
    return firsts.pop() if len(firsts) == 1 and 0 not in firsts else None


def _copy_batch_in_reshapes(model: Any, batch: int) -> None:
    """A Reshape to [batch, ...] becomes [0, ...]: 0 copies the input's dim 0 (allowzero=0)."""
    from onnx import numpy_helper

    shapes = {node.input[1] for node in model.graph.node if node.op_type == "Reshape"}
    for init in model.graph.initializer:
        if init.name not in shapes:
            continue
        shape = numpy_helper.to_array(init)
        if shape.ndim == 1 and shape.size and shape[0] == batch:
            shape = shape.copy()
            shape[0] = 0
            init.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), init.name))


def make_batch_dynamic(model: Any) -> bool:
    """Turn a graph written for one fixed batch size into one with a symbolic batch dim.

    Returns False (graph unchanged) when inputs and outputs do not share one fixed dim 0. The
    caller checks the result numerically: a graph may still bake the batch in elsewhere.
    """
    batch = _fixed_batch(model)
    if batch is None:
        return False
    _copy_batch_in_reshapes(model, batch)
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM
    del model.graph.value_info[:]  # intermediate shapes were inferred for the fixed batch
    return True

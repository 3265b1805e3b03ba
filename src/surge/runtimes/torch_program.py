"""What a `torch.export` program takes and returns: its signature, the structure its forward is
called with, and the bounds its dynamic dimensions were exported with.

A program's inputs and outputs are the leaves of its forward's arguments and results (a dict or
list of tensors is several tensors); a leaf that is not a tensor (an int fixed at export, a
None returned) cannot be served, and is refused at load in one line naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from surge.datatypes import torch_to_v2
from surge.errors import ModelLoadError, SurgeError
from surge.runtimes.base import Signature, TensorSpec
from surge.runtimes.dims import DimBounds


def _spec_from_value(name: str, value: Any, batched: bool) -> TensorSpec:
    shape = []
    for i, dim in enumerate(value.shape):
        static = isinstance(dim, int) and not (batched and i == 0)
        shape.append(int(dim) if static else -1)
    try:
        return TensorSpec(name, torch_to_v2(value.dtype), tuple(shape))
    except SurgeError as exc:
        raise ModelLoadError(f"tensor {name!r}: {exc}") from None


def _output_names(program: Any, count: int) -> list[str]:
    """A program whose forward returns a dict names its outputs by the keys (so an exported
    variant keeps the original's output names); otherwise output / output0, output1, ..."""
    spec = program.call_spec.out_spec
    if spec is not None and spec.type is dict and len(spec.context) == count:
        return [str(key) for key in spec.context]
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


def _input_values(program: Any) -> tuple[list[str], list[Any]]:
    """The names and fake tensors of the program's user inputs; ModelLoadError for an input
    fixed at export (an int, a bool, None), which a request cannot give."""
    nodes = {n.name: n for n in program.graph.nodes}
    names, values = [], []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        value = nodes[spec.arg.name].meta.get("val") if spec.arg.name in nodes else None
        if not hasattr(value, "shape"):
            shown = getattr(spec.arg, "value", value)
            raise ModelLoadError(f"input {spec.arg.name!r} is not a tensor but "
                                 f"{type(shown).__name__} {shown!r} fixed at export: export "
                                 "the model with tensor inputs only")
        names.append(spec.arg.name)
        values.append(value)
    return names, values


def _output_values(program: Any) -> list[Any]:
    """The fake tensors of the program's outputs; ModelLoadError for one that is not a tensor."""
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = []
    for index, arg in enumerate(output_node.args[0]):
        value = getattr(arg, "meta", {}).get("val")
        if not hasattr(value, "shape"):
            raise ModelLoadError(f"output {index} is not a tensor but {type(arg).__name__} "
                                 f"{arg!r}: export the model returning tensors only")
        values.append(value)
    return values


def exported_signature(program: Any) -> Signature:
    """Signature of a `torch.export.ExportedProgram`: dims marked dynamic become -1."""
    names, input_vals = _input_values(program)
    output_vals = _output_values(program)
    all_vals = input_vals + output_vals
    batched = bool(all_vals) and all(
        len(v.shape) > 0 and not isinstance(v.shape[0], int) for v in all_vals
    )
    inputs = tuple(_spec_from_value(n, v, batched) for n, v in zip(names, input_vals, strict=True))
    out_names = _output_names(program, len(output_vals))
    outputs = tuple(
        _spec_from_value(n, v, batched) for n, v in zip(out_names, output_vals, strict=True)
    )
    return Signature(inputs, outputs, batched=batched, platform="pytorch_export")


def _dim_bounds(program: Any, dim: Any) -> tuple[int, int | None]:
    """The least and most a dimension takes (a static one: its size; None: no most)."""
    import sympy

    if isinstance(dim, int):
        return dim, dim
    known = program.range_constraints.get(dim.node.expr)
    if known is None:
        return 0, None
    low = int(known.lower) if isinstance(known.lower, sympy.Integer) else 0
    high = int(known.upper) if isinstance(known.upper, sympy.Integer) else None
    return low, high


def exported_bounds(program: Any, names: Sequence[str]) -> dict[str, DimBounds]:
    """Each input's dimension bounds, for the inputs with a bounded dynamic dimension."""
    _, values = _input_values(program)
    bounds = {}
    for name, value in zip(names, values, strict=True):
        pairs = [_dim_bounds(program, dim) for dim in value.shape]
        dynamic = [pair for pair, dim in zip(pairs, value.shape, strict=True)
                   if not isinstance(dim, int)]
        if any(low > 0 or high is not None for low, high in dynamic):
            bounds[name] = DimBounds(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    return bounds


def to_torch(array: np.ndarray, datatype: str) -> Any:
    """A request's array as the tensor the model takes: BF16 words as bfloat16."""
    import torch

    if datatype == "BF16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor: Any) -> np.ndarray:
    """A result tensor as the array a response carries: bfloat16 as BF16 words (uint16)."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return np.asarray(tensor.view(torch.int16).numpy().view(np.uint16))
    return np.asarray(tensor.numpy())

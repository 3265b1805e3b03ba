"""ModelInferRequest / ModelInferResponse <-> tensors (raw contents and typed contents)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from surge.datatypes import numpy_to_v2, v2_to_numpy
from surge.errors import InputError
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.tensors import check_datatype, check_shape, tensor_from_bytes, tensor_to_bytes
from surge.protocol.types import (
    InferRequest,
    RequestedOutput,
    parse_pin,
    parse_priority,
    parse_timeout,
)

# Which typed-contents field carries each datatype (V2 gRPC protocol).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def parameter_value(param: Any) -> object:
    """The Python value of an InferParameter (None when unset)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def decode_infer_request(message: Any) -> InferRequest:
    """ModelInferRequest -> InferRequest; raw_input_contents, when present, cover every input."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InputError(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in inputs:
            raise InputError(f"input {name!r} is given twice")
        datatype = check_datatype(name, tensor.datatype)
        shape = check_shape(name, list(tensor.shape))
        if raw:
            inputs[name] = tensor_from_bytes(name, datatype, shape, raw[index])
        else:
            inputs[name] = _from_contents(name, datatype, shape, tensor.contents)
    if not inputs:
        raise InputError("request has no inputs")
    params = message.parameters
    priority = parameter_value(params["priority"]) if "priority" in params else 0
    timeout = parameter_value(params["timeout"]) if "timeout" in params else 0
    outputs = tuple(RequestedOutput(o.name) for o in message.outputs) or None
    variant, full = parse_pin(*(parameter_value(params[k]) if k in params else None
                                for k in ("accuracy", "variant")))
    return InferRequest(
        inputs=inputs,
        outputs=outputs,
        request_id=message.id,
        priority=parse_priority(priority),
        timeout_us=parse_timeout(timeout),
        variant=variant,
        full_accuracy=full,
    )


def _from_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InputError(f"input {name!r}: {datatype} travels only in raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InputError(
            f"input {name!r} has shape {list(shape)} ({count} elements) but {len(values)} "
            f"values in {field}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=v2_to_numpy(datatype)).reshape(shape)
    except OverflowError:
        raise InputError(f"input {name!r}: a value does not fit {datatype}") from None


def encode_infer_response(
    model: str, version: int | str, request: InferRequest, outputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, str] | None = None,
) -> Any:
    """Outputs -> ModelInferResponse with raw_output_contents (what Triton's clients read);
    `parameters` are the response's (`variant`: the variant that computed it)."""
    response = pb.ModelInferResponse(model_name=model, model_version=str(version),
                                     id=request.request_id)
    for key, value in (parameters or {}).items():
        response.parameters[key].string_param = value
    for name, array in outputs.items():
        datatype = numpy_to_v2(array.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(tensor_to_bytes(array, datatype))
    return response

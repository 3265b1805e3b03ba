"""ModelInferRequest / ModelInferResponse <-> tensors (raw contents and typed contents)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from surge.datatypes import sent_datatype, v2_to_numpy
from surge.errors import InputError
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.shared_memory import (
    Placement,
    Regions,
    SharedMemoryError,
    placement,
    read_input,
    write_output,
)
from surge.protocol.tensors import (
    check_datatype,
    check_shape,
    tensor_from_bytes,
    tensor_to_bytes,
    within_range,
)
from surge.protocol.types import (
    SEQUENCE_PARAMETERS,
    InferRequest,
    RequestedOutput,
    parse_pin,
    parse_priority,
    parse_sequence,
    parse_timeout,
)

# Which typed-contents field carries each datatype (V2 gRPC protocol).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}

_FIELD_DTYPE = {
    "bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
    "uint_contents": np.uint32, "uint64_contents": np.uint64, "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def parameter_value(param: Any) -> object:
    """The Python value of an InferParameter (None when unset)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def decode_infer_request(message: Any, regions: Regions | None = None) -> InferRequest:
    """ModelInferRequest -> InferRequest; raw_input_contents, when present, cover every input
    not placed in the shared-memory `regions` (None: shared memory is off)."""
    raw = message.raw_input_contents
    places = [_placement(regions, "input", tensor) for tensor in message.inputs]
    carried = sum(place is None for place in places)
    if raw and len(raw) != carried:
        raise InputError(f"raw_input_contents has {len(raw)} entries for {carried} inputs"
                         + ("" if carried == len(places) else " not in shared memory"))
    raw_entries = iter(raw)
    inputs: dict[str, np.ndarray] = {}
    for tensor, place in zip(message.inputs, places, strict=True):
        name = tensor.name
        if name in inputs:
            raise InputError(f"input {name!r} is given twice")
        datatype = check_datatype(name, tensor.datatype)
        shape = check_shape(name, list(tensor.shape))
        if (raw or place is not None) and tensor.HasField("contents"):
            raise (SharedMemoryError if place else InputError)(
                f"input {name!r} has both contents and "
                f"{'a shared memory region' if place else 'raw_input_contents'}")
        if place is not None:
            inputs[name] = read_input(name, datatype, shape, place)
        elif raw:
            inputs[name] = tensor_from_bytes(name, datatype, shape, next(raw_entries))
        else:
            inputs[name] = _from_contents(name, datatype, shape, tensor.contents)
    if not inputs:
        raise InputError("request has no inputs")
    return _request(message, inputs, regions)


def _request(message: Any, inputs: dict[str, np.ndarray], regions: Regions | None
             ) -> InferRequest:
    params = message.parameters
    priority = parameter_value(params["priority"]) if "priority" in params else 0
    timeout = parameter_value(params["timeout"]) if "timeout" in params else 0
    outputs = _requested_outputs(message.outputs, regions)
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
        **parse_sequence(*(parameter_value(params[k]) if k in params else None
                           for k in SEQUENCE_PARAMETERS)),
    )


def _placement(regions: Regions | None, kind: str, tensor: Any) -> Placement | None:
    if not tensor.parameters:
        return None
    params = {key: parameter_value(value) for key, value in tensor.parameters.items()}
    return placement(regions, f"{kind} {tensor.name!r}", params)


def _requested_outputs(items: Any, regions: Regions | None
                       ) -> tuple[RequestedOutput, ...] | None:
    """The requested outputs (None: every output); a name twice is refused, not answered
    once (an output placed twice would be written into one of its places only)."""
    outputs: dict[str, RequestedOutput] = {}
    for output in items:
        if output.name in outputs:
            raise InputError(f"output {output.name!r} is requested twice")
        outputs[output.name] = _requested(output, regions)
    return tuple(outputs.values()) or None


def _requested(output: Any, regions: Regions | None) -> RequestedOutput:
    if "classification" in output.parameters and parameter_value(
            output.parameters["classification"]):
        raise InputError(f"output {output.name!r}: the classification extension is not "
                         f"supported")
    return RequestedOutput(output.name, place=_placement(regions, "output", output))


def _from_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InputError(f"input {name!r}: {datatype} travels only in raw_input_contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:  # they would be dropped without a word, the input read from `field` alone
        raise InputError(f"input {name!r} is {datatype}, whose values go in {field}, but "
                         f"{others[0]} holds values")
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
    dtype = v2_to_numpy(datatype)
    # Read at the field's own width, then checked: a cast straight to a narrower type wraps.
    wide: np.ndarray = np.array(values, dtype=_FIELD_DTYPE[field])
    if wide.size and not within_range(wide, dtype):
        raise InputError(f"input {name!r}: {field} holds values outside {datatype}'s range")
    return wide.astype(dtype).reshape(shape)


def encode_infer_response(
    model: str, version: int | str, request: InferRequest, outputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, str] | None = None,
) -> Any:
    """Outputs -> ModelInferResponse with raw_output_contents (what Triton's clients read);
    `parameters` are the response's (`variant`: the variant that computed it). An output
    written into shared memory has, as from Triton, an empty raw_output_contents entry
    (clients find each output's entry by its index)."""
    response = pb.ModelInferResponse(model_name=model, model_version=str(version),
                                     id=request.request_id)
    for key, value in (parameters or {}).items():
        response.parameters[key].string_param = value
    places = request.places()
    for name, array in outputs.items():
        datatype = sent_datatype(array)  # BF16 words: BF16 (`label_bf16`)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        place = places.get(name)
        if place is None:
            response.raw_output_contents.append(tensor_to_bytes(array, datatype))
            continue
        write_output(name, array, datatype, place)
        response.raw_output_contents.append(b"")
    return response

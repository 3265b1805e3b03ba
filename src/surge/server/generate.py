"""Triton's generate extension: `POST /v2/models/{m}[/versions/{v}]/generate` and
`.../generate_stream`, plain JSON for clients that build no V2 tensors (curl, browsers, LLM
tools).

The body is an object whose keys are the model's inputs, each a plain JSON value (a string, a
number, a bool or lists of them), plus optional `parameters` (the V2 request parameters:
priority, timeout, accuracy, variant, sequence_id...) and `id`. Each value becomes its input's
tensor with the datatype the model's metadata gives, shaped as Triton shapes it (`tensor_shape`).
The answer is an object with `model_name`, `model_version` and one key per output: a single
value as a scalar, anything else as a flat list, as Triton writes them.

`generate_stream` answers the same object as one Server-Sent Event (`data: {...}`), which is
what Triton sends for a model that is not decoupled (Surge has none): SSE clients work as they
do against Triton. The whole answer is computed before the first byte goes out, so that every
error, as from /infer, is a status with a JSON `error`, never an event after a 200.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import orjson

from surge.datatypes import sent_datatype
from surge.engine import InferenceEngine
from surge.errors import InputError, ModelNotReadyError, SurgeError, shown
from surge.protocol.metadata import model_metadata
from surge.protocol.rest import json_object, parameter_fields, request_parameters
from surge.protocol.tensors import check_shape, tensor_from_list, tensor_to_list
from surge.protocol.types import InferRequest
from surge.server.repository_load import refuse_repeated_keys

GENERATE, GENERATE_STREAM = "generate", "generate_stream"
# The POST routes of a model that infer: /infer and the generate extension's two.
INFER_ROUTES = ("infer", GENERATE, GENERATE_STREAM)
# Keys of the body that are not inputs (an input of the same name is the input).
_REQUEST_KEYS = ("parameters", "id")
# Keys of the answer that are not outputs.
_ANSWER_KEYS = ("id", "model_name", "model_version", "variant")
_MAX_DIMS = 16  # as check_shape: deeper nesting is refused before it is walked further
# The states of a model of the repository that its next /infer loads (engine.index).
_LOADS_ON_REQUEST = ("UNLOADED", "EVICTED")
_SCALARS = frozenset({str, bool, int, float})  # the JSON values an element may be
_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")


class GenerateCodec:
    """The generate extension's request and answer, in the place of the V2 JSON codec on
    the inference path (app.py): routes, statistics, logs, traces and metrics count it as
    any other inference."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    def decoder(self, engine: InferenceEngine, name: str,
                version: int | None) -> Callable[[bytes], InferRequest]:
        """The body's decoder for the model: its inputs are read here, on the event loop (the
        decoding of a large body runs in a thread)."""
        inputs, batched = input_specs(engine, name, version)
        return partial(decode_generate, inputs=inputs, batched=batched)

    def encode(self, name: str, version: int | str, request: InferRequest,
               outputs: Mapping[str, np.ndarray],
               variant: str | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        answer = orjson.dumps(generate_answer(name, version, request, outputs, variant))
        if self.stream:  # one event: the model answers once (no model of Surge is decoupled)
            return b"data: " + answer + b"\n\n", [_SSE, (b"cache-control", b"no-cache")]
        return answer, [_JSON]


def codec_for(route: str) -> GenerateCodec | None:
    """The codec of a model route (None: /infer, the V2 codec)."""
    return None if route == "infer" else GenerateCodec(route == GENERATE_STREAM)


def input_specs(engine: InferenceEngine, name: str,
                version: int | None) -> tuple[list[dict[str, Any]], bool]:
    """The model's inputs as its metadata shows them (name, datatype, shape with -1 dims; a
    sequence model's implicit state left out) and whether it batches. A model whose answer
    cannot be written as a generate answer is refused here, before it runs: a sequence
    model's state would otherwise move on for an answer that is never sent."""
    try:
        handle = engine.model(name, version)
    except SurgeError:
        _refuse_cold(engine, name)
        raise
    metadata = model_metadata(handle)
    for output in metadata["outputs"]:
        _check_output_name(output["name"])
    return metadata["inputs"], handle.signature.batched


def _check_output_name(output: str) -> None:
    if output in _ANSWER_KEYS:  # refused rather than one of the two dropped
        raise InputError(f"the model's output {output!r} has the name of a key of the "
                         f"generate answer ({', '.join(_ANSWER_KEYS)}): use /infer")


def _refuse_cold(engine: InferenceEngine, name: str) -> None:
    """A model that loads on its next request (on demand, evicted) or is loading gets a 503,
    not the 404 of an unknown name: the generate body cannot be read without the model's
    inputs, and only /infer loads a model on its first request. Any other model that is not
    loaded (its load failed, or it was unloaded) keeps /infer's answer: /infer loads none."""
    for row in engine.index():
        if row["name"] != name:
            continue
        if row["state"] == "LOADING":
            raise ModelNotReadyError(f"model {name!r} is loading: /generate needs its inputs; "
                                     f"send the request again once it is ready")
        if row["state"] in _LOADS_ON_REQUEST:
            raise ModelNotReadyError(
                f"model {name!r} is not loaded ({row['state']}): /generate needs its inputs; "
                f"load it, or send one request to /v2/models/{name}/infer, which loads it")


def decode_generate(body: bytes, inputs: list[dict[str, Any]], batched: bool) -> InferRequest:
    """A generate body -> InferRequest of every output, for a model of `inputs` (metadata)."""
    view = memoryview(body)
    header = json_object(view)
    specs = {spec["name"]: spec for spec in inputs}
    # an input named `parameters` is that input, as one named `id` is (no request parameters)
    params = {} if "parameters" in specs else request_parameters(header)
    _refuse_repeated_keys(body, header, params)
    values = _input_values(header, params, specs)
    missing = [name for name in specs if name not in values]
    if missing:
        raise InputError(f"missing input {', '.join(map(repr, missing))}: the body must give "
                         f"every input of the model ({', '.join(specs)}) as a key")
    tensors = {name: input_tensor(specs[name], value, batched) for name, value in values.items()}
    request_id = header.get("id", "") if "id" not in specs else ""
    if not isinstance(request_id, str):
        raise InputError(f"request 'id' must be a string, got {shown(request_id)}")
    return InferRequest(inputs=tensors, outputs=None, request_id=request_id,
                        **parameter_fields(params, view))


def _refuse_repeated_keys(body: bytes, header: Mapping[str, Any],
                          params: Mapping[str, Any]) -> None:
    """Refuse a key given twice in the body or its `parameters`: orjson keeps the last value,
    which would drop an input (or a parameter) without a word. A repeated key is in the text
    twice, or escaped: only then is the body read again by Python's parser, which sees each
    pair (a large body of numbers is not parsed twice)."""
    keys = [*header, *_nested_keys(params)]
    if b"\\" not in body and all(body.count(orjson.dumps(key)) == 1 for key in keys):
        return
    with contextlib.suppress(ValueError):  # JSON orjson reads and Python's parser does not
        refuse_repeated_keys(body, "; give each input and parameter once")


def _nested_keys(value: object) -> list[str]:
    """The keys of the objects in `value`, at every level: walked with a stack, not calls
    (parameters may nest as deep as orjson reads), and past lists of scalars in one step (an
    input given in `parameters` may be ten million numbers)."""
    keys: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            keys.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list) and not set(map(type, item)) <= _SCALARS:
            stack.extend(item)
    return keys


def _input_values(header: Mapping[str, Any], params: Mapping[str, Any],
                  specs: Mapping[str, Any]) -> dict[str, Any]:
    """The body's value of each input: its keys, and (as Triton reads them) the keys of
    `parameters` that name an input. Any other key of the body is refused: a misspelt input
    would otherwise be dropped without a word."""
    values: dict[str, Any] = {}
    for key, value in header.items():
        if key in specs:
            values[key] = value
        elif key not in _REQUEST_KEYS:
            raise InputError(f"unknown input {shown(key)}: the model's inputs are "
                             f"{', '.join(specs) or 'none'}; request parameters go in "
                             f"'parameters'")
    for key in params.keys() & specs.keys():
        if key in values:
            raise InputError(f"input {key!r} is given twice, as a key and in 'parameters'")
        values[key] = params[key]
    return values


def input_tensor(spec: Mapping[str, Any], value: object, batched: bool) -> np.ndarray:
    """`value` as input `spec`'s tensor (its datatype; shape as `tensor_shape`)."""
    name = spec["name"]
    given = nested_shape(name, value)
    shape = tensor_shape(name, tuple(spec["shape"]), given, batched)
    if len(given) > 1 and len(shape) > len(given):
        value = [value]  # the batch dimension of one request, around the nested value
    return tensor_from_list(name, spec["datatype"], shape, value)


def nested_shape(name: str, value: object, depth: int = 0) -> tuple[int, ...]:
    """The shape of a JSON value: () for a scalar, the lengths of rectangular nested lists.
    A ragged list, an object or null is refused naming where."""
    if not isinstance(value, list):
        if isinstance(value, str | bool | int | float):
            return ()
        raise InputError(f"input {name!r}: values must be strings, numbers or bools (or lists "
                         f"of them), got {_json_kind(value)}")
    if depth >= _MAX_DIMS:
        raise InputError(f"input {name!r} is nested past {_MAX_DIMS} lists")
    if not value:
        return (0,)
    kinds = set(map(type, value))  # one pass in C: a flat list of 10 million numbers is common
    if kinds <= _SCALARS:
        return (len(value),)
    inner = [nested_shape(name, item, depth + 1) for item in value]
    for index, shape in enumerate(inner):
        if shape != inner[0]:
            raise InputError(f"input {name!r}: the nested list is ragged: element {index} has "
                             f"shape {list(shape)}, element 0 {list(inner[0])}")
    return (len(value), *inner[0])


def _json_kind(value: object) -> str:
    return "null" if value is None else "an object" if isinstance(value, dict) else shown(value)


def tensor_shape(name: str, dims: tuple[int, ...], given: tuple[int, ...],
                 batched: bool) -> tuple[int, ...]:
    """The shape of an input of metadata shape `dims` (-1: any) whose value has shape `given`.

    A scalar or flat list is spread over `dims` as Triton does: each fixed dimension takes its
    size, the innermost variable one the rest, any other variable one 1 (a batching model's
    batch dimension among them: a scalar for [-1, 1] is [1, 1]). A nested list keeps its
    shape, with a batch dimension of 1 put in front for a batching model when it leaves that
    out."""
    if len(given) <= 1:
        shape = _spread(name, dims, given[0] if given else 1)
    elif len(given) == len(dims):
        shape = given
    elif batched and len(given) == len(dims) - 1:
        shape = (1, *given)
    else:
        raise InputError(f"input {name!r} is nested as {list(given)}, which does not fit its "
                         f"shape {list(dims)}: nest it as that shape, or give a flat list")
    if not all(want in (-1, got) for want, got in zip(dims, shape, strict=True)):
        raise InputError(f"input {name!r} is nested as {list(given)}, which does not fit its "
                         f"shape {list(dims)}")
    return check_shape(name, list(shape))


def _spread(name: str, dims: tuple[int, ...], count: int) -> tuple[int, ...]:
    fixed = math.prod(d for d in dims if d != -1)
    if fixed == 0 or count % fixed or (count != fixed and -1 not in dims):
        raise InputError(f"input {name!r}: {count} value(s) do not fill its shape "
                         f"{list(dims)}; give a multiple of {fixed} values or a nested list")
    rest = count // fixed
    shape = list(dims)
    for index in reversed(range(len(shape))):
        if shape[index] == -1:
            shape[index], rest = rest, 1
    return tuple(shape)


def generate_answer(name: str, version: int | str, request: InferRequest,
                    outputs: Mapping[str, np.ndarray], variant: str | None) -> dict[str, Any]:
    """The answer object: the reserved keys, then one key per output (a single value as a
    scalar, otherwise a flat list, as Triton writes them)."""
    answer: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if request.request_id:
        answer["id"] = request.request_id
    if variant:  # a response parameter: Triton writes those as keys of the answer
        answer["variant"] = variant
    for output, array in outputs.items():
        _check_output_name(output)  # as input_specs did, for an answer of another version
        values = tensor_to_list(array, sent_datatype(array))
        answer[output] = values[0] if len(values) == 1 else values
    return answer


__all__ = ["GENERATE", "GENERATE_STREAM", "INFER_ROUTES", "GenerateCodec", "codec_for",
           "decode_generate", "generate_answer", "input_tensor", "nested_shape",
           "tensor_shape"]

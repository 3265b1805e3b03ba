"""V2 REST inference codec: JSON tensors and the binary tensor extension.

With the binary extension the body is a JSON header of `Inference-Header-Content-Length` bytes
followed by the tensors' raw bytes, in the order the header lists them with `binary_data_size`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson

from surge.datatypes import sent_datatype
from surge.errors import InputError, clipped, shown
from surge.protocol.shared_memory import (
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
    tensor_from_list,
    tensor_to_bytes,
    tensor_to_list,
)
from surge.protocol.types import (
    MAX_ERROR_CHARS,
    InferRequest,
    RequestedOutput,
    parse_pin,
    parse_priority,
    parse_sequence,
    parse_timeout,
)

HEADER_LENGTH = "inference-header-content-length"
# Longest header value taken as a length: ASCII digits only (`str.isdigit` also accepts '²',
# which int() refuses), and few enough that int() stays cheap and in range.
_MAX_LENGTH_DIGITS = 18
BINARY_SIZE = "binary_data_size"


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """The `Inference-Header-Content-Length` header value, checked against the body size."""
    if value is None:
        return None
    if not (0 < len(value) <= _MAX_LENGTH_DIGITS and value.isascii() and value.isdigit()):
        raise InputError(
            "Inference-Header-Content-Length must be an integer of at most "
            f"{_MAX_LENGTH_DIGITS} ASCII digits, got {shown(value)}"
        )
    length = int(value)
    if length > body_size:
        raise InputError(
            f"Inference-Header-Content-Length {length} exceeds the body size {body_size}"
        )
    return length


# The request headers the inference path reads, found in one pass over the list.
_INFER_HEADERS = frozenset({b"inference-header-content-length", b"content-encoding",
                            b"x-request-id", b"traceparent", b"tracestate"})


def path_parts(path: str, raw_path: bytes | None) -> list[str]:
    """The path's segments, each percent-decoded on its own when the client encoded any: `%2F`
    stays inside its segment (a shared-memory region's name may hold a '/'), and bytes that
    are not UTF-8 are refused (the server's `path` turns them into U+FFFD, so that `%FF` and
    `%FE` would name the same region)."""
    if not raw_path or b"%" not in raw_path:
        return path.strip("/").split("/")
    try:
        return [unquote(part, errors="strict")
                for part in raw_path.decode("ascii").strip("/").split("/")]
    except UnicodeError:
        raise InputError("the request path is not UTF-8 once percent-decoded") from None


READ, WRITE = ("GET", "HEAD"), ("POST",)


def route_methods(rest: list[str]) -> tuple[str, ...] | None:
    """The methods a V2 path answers (`rest`: its segments after `v2`; the shared-memory and
    OpenAPI routes are the server's), None where there is no route: a route asked with another
    method is a 405 naming them (RFC 9110 15.5.6), not a 404 saying there is none."""
    if rest in ([], ["models", "stats"], ["health", "live"], ["health", "ready"]):
        return READ
    if rest == ["logging"]:  # the logging extension: read and change the settings
        return (*READ, *WRITE)
    if rest == ["repository", "index"] or (
            len(rest) == 4 and rest[:2] == ["repository", "models"]
            and rest[3] in ("load", "unload")):
        return WRITE
    if len(rest) < 2 or rest[0] != "models":
        return None
    action = rest[4:] if rest[2:3] == ["versions"] and len(rest) >= 4 else rest[2:]
    if action in (["infer"], ["generate"], ["generate_stream"]):
        return WRITE
    return READ if action in ([], ["ready"], ["config"], ["stats"]) else None


def request_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The headers inference reads (lower-case names, as the server gives them)."""
    found: dict[bytes, bytes] = {}
    for key, value in headers:
        if key in _INFER_HEADERS:  # tracestate: one list over all its fields (RFC 9110 5.3)
            joined = key == b"tracestate" and key in found
            found[key] = found[key] + b"," + value if joined else value
    return found


def request_header_length(headers: dict[bytes, bytes], body_size: int) -> int | None:
    """The JSON header's length of a body (None: all JSON); a compressed body is refused."""
    encoding = headers.get(b"content-encoding")
    if encoding is not None and encoding not in (b"identity", b""):
        raise InputError(f"unsupported Content-Encoding {encoding.decode('latin-1')!r}")
    length = headers.get(b"inference-header-content-length")
    return None if length is None else parse_header_length(length.decode("latin-1"), body_size)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(value: object, what: str) -> dict[str, Any]:
    return {} if value is None else _object(value, f"{what} 'parameters'")


def _json_header(header: memoryview) -> Any:
    """The request's JSON. Python's `json.dumps` (and with it tritonclient's JSON inputs)
    writes NaN and infinities as the literals `NaN`, `Infinity`, `-Infinity`, which orjson
    refuses: a body that fails with one of them is read again by Python's parser, which takes
    them, as Triton's does."""
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        error = exc
    text = bytes(header)
    if b"NaN" in text or b"Infinity" in text:
        # Decoded as UTF-8 here, as orjson reads it: given bytes, Python's parser also takes
        # UTF-16 and UTF-32 (and a BOM), whose true and false `data_may_hold_bools` would not
        # find. UnicodeDecodeError is a ValueError; RecursionError: deep nesting.
        with contextlib.suppress(ValueError, RecursionError):
            return json.loads(text.decode("utf-8"))
    if "infinity when parsed as double" in str(error):  # valid JSON all the same
        raise InputError(f"request body holds a number past the range of a 64-bit float "
                         f"({error})")
    raise InputError(f"request body is not valid JSON ({error})")


def _as_written(params: Mapping[str, Any], name: str, header: memoryview) -> Any:
    """Request parameter `name` (default 0) as the client wrote it: orjson reads an integer
    past 64 bits as a float, and a priority of 2**64 was refused as `got
    1.8446744073709552e+19`. A float, which `priority` and `timeout` refuse anyway, is read
    again by Python's parser, which keeps integers whole, for the message."""
    value = params.get(name, 0)
    if isinstance(value, float):
        with contextlib.suppress(ValueError, RecursionError, LookupError, TypeError):
            return json.loads(bytes(header))["parameters"][name]
    return value


def decode_request(body: bytes, header_length: int | None,
                   regions: Regions | None = None) -> InferRequest:
    """Request body (JSON, or JSON header + binary tensors) -> InferRequest; inputs and
    outputs may name the shared-memory `regions` (None: shared memory is off)."""
    view = memoryview(body)
    header_bytes = view if header_length is None else view[:header_length]
    header = json_object(header_bytes)
    params = request_parameters(header)
    binary = view[len(header_bytes):]
    bools = data_may_hold_bools(body, len(header_bytes), header)
    inputs = _decode_inputs(header.get("inputs"), binary, regions, bools)
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InputError(f"request 'id' must be a string, got {shown(request_id)}")
    return InferRequest(
        inputs=inputs,
        outputs=_decode_outputs(header.get("outputs"), params, regions),
        request_id=request_id,
        binary_default=_flag(params, "binary_data_output", "request parameter", False),
        **parameter_fields(params, header_bytes),
    )


def json_object(body: memoryview) -> dict[str, Any]:
    """A request body's JSON object (NaN and infinities read as Python's parser reads them)."""
    return _object(_json_header(body), "request body")


def request_parameters(header: Mapping[str, Any]) -> dict[str, Any]:
    """A request's `parameters` object ({} when absent)."""
    return _parameters(header.get("parameters"), "request")


def parameter_fields(params: Mapping[str, Any], header: memoryview) -> dict[str, Any]:
    """The InferRequest fields the request parameters set (scheduling, variant pin, sequence):
    one reading for /infer and /generate, so that both take the same parameters."""
    return {
        "priority": parse_priority(_as_written(params, "priority", header)),
        "timeout_us": parse_timeout(_as_written(params, "timeout", header)),
        **_pin(params),
        **parse_sequence(_as_written(params, "sequence_id", header),
                         params.get("sequence_start"), params.get("sequence_end")),
    }


def _pin(params: Mapping[str, Any]) -> dict[str, Any]:
    variant, full = parse_pin(params.get("accuracy"), params.get("variant"))
    return {"variant": variant, "full_accuracy": full}


def data_may_hold_bools(body: bytes, header_end: int, header: Mapping[str, Any]) -> bool:
    """Whether an input's JSON `data` may hold true or false, which a number type refuses
    (`tensor_from_list`). Every true and false of the JSON is those very bytes in it, so when
    the bytes hold no more of them than the values found outside the inputs' data (the
    parameters of the request, its inputs and outputs), the data holds none: then a large
    tensor's list is not looked through (that would cost most of what reading it costs)."""
    text = body if isinstance(body, bytes | bytearray) else bytes(body)
    true, false = _words(text, b"true", header_end), _words(text, b"false", header_end)
    if true is None or false is None:
        return True
    return true + false > _bools_outside_data(header)


# First letters of a word looked at before `_words` gives up (a body with text in it).
_SCAN_LIMIT = 256


def _words(text: bytes | bytearray, word: bytes, end: int) -> int | None:
    """How many times `word` is in text[:end], or None past _SCAN_LIMIT of its first letter.
    Found by that letter, which `find` looks for with memchr: on a body of numbers, which holds
    few letters, 40 times as fast as counting the word itself (2 MB: 30 us, not 1.1 ms)."""
    first = word[:1]
    found, seen, at = 0, 0, text.find(first, 0, end)
    while at >= 0:
        seen += 1
        if seen > _SCAN_LIMIT:
            return None
        found += text.startswith(word, at, end)
        at = text.find(first, at + 1, end)
    return found


def _bools_outside_data(header: Mapping[str, Any]) -> int:
    """The true and false values of the request, not counting its inputs' `data`."""
    found, stack = 0, [value for key, value in header.items() if key != "inputs"]
    inputs = header.get("inputs")
    for item in inputs if isinstance(inputs, list) else [inputs]:
        stack.append({key: value for key, value in item.items() if key != "data"}
                     if isinstance(item, dict) else item)
    while stack:  # a stack, not recursion: parameters may nest deeper than Python recurses
        value = stack.pop()
        if isinstance(value, bool):
            found += 1
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def _decode_inputs(items: object, binary: memoryview, regions: Regions | None,
                   bools: bool = True) -> dict[str, np.ndarray]:
    if not isinstance(items, list) or not items:
        raise InputError("request 'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        spec = _object(item, "each entry of 'inputs'")
        name = spec.get("name")
        if not isinstance(name, str):
            raise InputError(f"input entry has no string 'name': {str(spec)[:80]}")
        if name in inputs:
            raise InputError(f"input {name!r} is given twice")
        datatype = check_datatype(name, spec.get("datatype"))
        shape = check_shape(name, spec.get("shape"))
        params = _parameters(spec.get("parameters"), f"input {name!r}")
        if params and _shared(spec, params, regions, inputs, (name, datatype, shape)):
            continue
        if BINARY_SIZE not in params:
            if "data" not in spec:
                raise InputError(f"input {name!r} has neither 'data' nor 'binary_data_size'")
            inputs[name] = tensor_from_list(name, datatype, shape, spec["data"], bools)
            continue
        if "data" in spec:  # as Triton: one of them, not the binary bytes with 'data' unread
            raise InputError(f"input {name!r} has both 'data' and 'binary_data_size': give one")
        size = params[BINARY_SIZE]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise InputError(
                f"input {name!r}: binary_data_size {size} exceeds the {len(binary) - offset} "
                "binary bytes left in the body"
            )
        inputs[name] = tensor_from_bytes(name, datatype, shape, binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise InputError(f"request body has {len(binary) - offset} binary bytes no input claims")
    return inputs


def _shared(spec: dict[str, Any], params: dict[str, Any], regions: Regions | None,
            inputs: dict[str, np.ndarray], tensor: tuple[str, str, tuple[int, ...]]) -> bool:
    """Whether the input's parameters place it in shared memory (then read into `inputs`)."""
    name, datatype, shape = tensor
    place = placement(regions, f"input {name!r}", params)
    if place is None:
        return False
    if "data" in spec or BINARY_SIZE in params:
        raise SharedMemoryError(f"input {name!r} names shared memory region "
                                f"{place.region.name!r} and also carries data: give one")
    inputs[name] = read_input(name, datatype, shape, place)
    return True


def _decode_outputs(
    items: object, params: Mapping[str, Any], regions: Regions | None
) -> tuple[RequestedOutput, ...] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        raise InputError("request 'outputs' must be a list")
    default = _flag(params, "binary_data_output", "request parameter", False)
    outputs: dict[str, RequestedOutput] = {}
    for item in items:
        spec = _object(item, "each entry of 'outputs'")
        name = spec.get("name")
        if not isinstance(name, str):
            raise InputError(f"output entry has no string 'name': {str(spec)[:80]}")
        if name in outputs:
            raise InputError(f"output {name!r} is requested twice")
        outputs[name] = _requested_output(name, spec, default, regions)
    # an empty list asks for no output in particular: every output, as Triton answers
    return tuple(outputs.values()) or None


def _requested_output(name: str, spec: dict[str, Any], default: bool,
                      regions: Regions | None) -> RequestedOutput:
    params = _parameters(spec.get("parameters"), f"output {name!r}")
    if params.get("classification"):
        raise InputError(f"output {name!r}: the classification extension is not supported")
    binary = _flag(params, "binary_data", f"output {name!r} parameter", default)
    place = placement(regions, f"output {name!r}", params) if params else None
    if place is not None and binary and "binary_data" in params:
        raise SharedMemoryError(f"output {name!r} names shared memory region "
                                f"{place.region.name!r} and asks for binary_data: give one")
    return RequestedOutput(name, binary, place)


def _flag(params: Mapping[str, Any], key: str, what: str, default: bool) -> bool:
    """A boolean parameter (`default` when absent): true or false, as Triton reads it, not
    any value Python takes as true (the string "false" would ask for binary data)."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InputError(f"{what} {key!r} must be true or false, got {shown(value)}")
    return value


def encode_response(
    model: str,
    version: int | str,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, str] | None = None,
) -> tuple[bytes, int | None]:
    """Outputs -> (body, header length); the header length is None for a pure JSON body.
    `parameters` are the response's (`variant`: the variant that computed it)."""
    binary_names = _binary_outputs(request, outputs)
    places = request.places()
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        datatype = sent_datatype(array)  # BF16 words: BF16 (`label_bf16`)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        place = places.get(name)
        if place is not None:
            # No data and, as from Triton, no parameters: tritonclient's C++ client (and with
            # it perf_analyzer) takes an output's parameters to announce binary data.
            write_output(name, array, datatype, place)
        elif name in binary_names:
            raw = tensor_to_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor_to_list(array, datatype)
        entries.append(entry)
    header: dict[str, Any] = {"model_name": model, "model_version": str(version),
                              "outputs": entries}
    if request.request_id:
        header["id"] = request.request_id
    if parameters:
        header["parameters"] = dict(parameters)
    head = orjson.dumps(header)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def encoded_answer(model: str, version: int | str, request: InferRequest,
                   outputs: Mapping[str, np.ndarray],
                   variant: str | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """`encode_response` of an answer computed by `variant` (None: a model without a ladder),
    with the HTTP headers that go with the body."""
    payload, header_length = encode_response(
        model, version, request, outputs, {"variant": variant} if variant else None)
    if header_length is None:
        return payload, [(b"content-type", b"application/json")]
    return payload, [(b"content-type", b"application/octet-stream"),
                     (b"inference-header-content-length", str(header_length).encode())]


def _binary_outputs(request: InferRequest, outputs: Mapping[str, np.ndarray]) -> set[str]:
    if request.outputs is None:
        return set(outputs) if request.binary_default else set()
    return {o.name for o in request.outputs if o.binary}


def encode_json(value: object) -> bytes:
    return orjson.dumps(value)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": clipped(message, MAX_ERROR_CHARS)})

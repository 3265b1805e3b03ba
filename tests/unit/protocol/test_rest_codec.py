"""The V2 REST codec: JSON and binary tensors, BYTES framing, and precise 400 messages."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import orjson
import pytest

from surge.errors import InputError
from surge.protocol.rest import decode_request, encode_response, parse_header_length
from surge.protocol.tensors import deserialize_bytes, serialize_bytes
from surge.protocol.types import InferRequest, RequestedOutput

V2_NUMPY = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), len(head)


def test_json_inputs_decode_to_typed_arrays_with_parameters() -> None:
    body = json.dumps({
        "id": "r1",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
            {"name": "n", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]},
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "héllo"]},
        ],
        "outputs": [{"name": "y"}],
        "parameters": {"priority": 2, "timeout": 5000},
    }).encode()
    request = decode_request(body, None)
    assert request.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(request.inputs["x"], [[1, 2], [3, 4]])
    assert request.inputs["n"].dtype == np.int64
    assert list(request.inputs["s"]) == [b"a", "héllo".encode()]
    assert request.output_names == ["y"]
    assert (request.request_id, request.priority, request.timeout_us) == ("r1", 2, 5000)


def test_binary_inputs_are_sliced_in_header_order() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    n = np.array([7, -8], dtype=np.int64)
    strings = serialize_bytes(np.array([b"ab", b""], dtype=object))
    body, length = binary_body({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 3],
         "parameters": {"binary_data_size": x.nbytes}},
        {"name": "s", "datatype": "BYTES", "shape": [2],
         "parameters": {"binary_data_size": len(strings)}},
        {"name": "n", "datatype": "INT64", "shape": [2],
         "parameters": {"binary_data_size": n.nbytes}},
    ]}, x.tobytes(), strings, n.tobytes())
    request = decode_request(body, length)
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["n"], n)
    assert list(request.inputs["s"]) == [b"ab", b""]


def test_bytes_elements_are_length_prefixed_little_endian() -> None:
    raw = serialize_bytes(np.array(["hi", b"\x00\xff"], dtype=object))
    assert raw == struct.pack("<I", 2) + b"hi" + struct.pack("<I", 2) + b"\x00\xff"
    assert list(deserialize_bytes("s", raw, 2)) == [b"hi", b"\x00\xff"]


@pytest.mark.parametrize(("header", "binary", "message"), [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                  "parameters": {"binary_data_size": 20}}]}, b"\0" * 20,
     "input 'x' expects 24 bytes for FP32 [2, 3], got 20"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                  "parameters": {"binary_data_size": 8}}]}, b"\0" * 12,
     "4 binary bytes no input claims"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                  "parameters": {"binary_data_size": 16}}]}, b"\0" * 8,
     "binary_data_size 16 exceeds the 8 binary bytes"),
    ({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                  "parameters": {"binary_data_size": 6}}]}, struct.pack("<I", 9) + b"ab",
     "input 's': BYTES element 0 declares 9 bytes, 2 remain"),
    ({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2],
                  "parameters": {"binary_data_size": 6}}]}, struct.pack("<I", 2) + b"ab",
     "input 's': expected 2 BYTES elements, got 1"),
])
def test_binary_size_errors_name_the_input_and_sizes(header: dict, binary: bytes,
                                                      message: str) -> None:
    body, length = binary_body(header, binary)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_request(body, length)


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "request body is not valid JSON"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b'{"inputs": []}', "'inputs' must be a non-empty list"),
    (b'{"inputs": [{"name": "x", "datatype": "FP33", "shape": [1], "data": [1]}]}',
     "input 'x' has unknown datatype 'FP33'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
     "input 'x' has invalid shape"),
    # Empty, but a shape numpy cannot make: refused, not a 500.
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [4611686018427387904,'
     b' 4611686018427387904, 0], "data": []}]}', r"over 4294967296 elements"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [9223372036854775808, 0],'
     b' "data": []}]}', r"over 4294967296 elements"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}',
     r"input 'x' has shape \[3\] \(3 elements\) but 2 data values"),
    (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1.5]}]}',
     "input 'x': INT64 data holds non-integer values"),
    (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2, 2], "data": []}]}',
     r"input 'x' has shape \[2, 2\] \(4 elements\) but 0 data values"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}',
     "input 'x': data does not hold FP32 values"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [true, false]}]}',
     "input 'x': data does not hold FP32 values"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}',
     "input 'x' has neither 'data' nor 'binary_data_size'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},'
     b' {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
     "input 'x' is given twice"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
     b' "parameters": {"priority": -1}}', "parameter 'priority' must be a non-negative integer"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
     b' "parameters": {"timeout": "soon"}}', "parameter 'timeout' must be a non-negative"),
])
def test_bad_json_requests_raise_input_errors(body: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_request(body, None)


def test_header_length_is_checked_against_the_body() -> None:
    assert parse_header_length(None, 10) is None
    assert parse_header_length("4", 10) == 4
    with pytest.raises(InputError, match="must be an integer"):
        parse_header_length("x", 10)
    with pytest.raises(InputError, match="exceeds the body size 10"):
        parse_header_length("11", 10)


def _outputs() -> dict[str, np.ndarray]:
    return {
        "y": np.array([[1.5, -2.0]], dtype=np.float32),
        "m": np.array([[3]], dtype=np.int64),
        "t": np.array([[b"ok", b"\xc3\xa9"]], dtype=object),
    }


def test_json_response_carries_data_and_version_as_string() -> None:
    request = InferRequest(inputs={}, outputs=None, request_id="abc")
    body, length = encode_response("tiny", 3, request, _outputs())
    assert length is None
    decoded = orjson.loads(body)
    assert decoded["model_name"] == "tiny"
    assert decoded["model_version"] == "3"
    assert decoded["id"] == "abc"
    by_name = {o["name"]: o for o in decoded["outputs"]}
    assert by_name["y"] == {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}
    assert by_name["m"]["data"] == [3]
    assert by_name["t"]["data"] == ["ok", "é"]


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_json_answers_carry_nan_and_infinity_as_strings_numpy_reads_back(datatype: str) -> None:
    # orjson writes NaN and infinity as null: a client read a missing value, not the answer
    values = np.array([1.5, np.nan, np.inf, -np.inf], V2_NUMPY[datatype])
    request = InferRequest(inputs={}, outputs=None)
    body, _ = encode_response("tiny", 1, request, {"y": values})
    data = orjson.loads(body)["outputs"][0]["data"]
    assert data == [1.5, "NaN", "Infinity", "-Infinity"]
    np.testing.assert_array_equal(np.array(data, V2_NUMPY[datatype]), values)


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_json_inputs_take_nan_and_infinity_as_python_and_as_answers_write_them(
        datatype: str) -> None:
    values = np.array([1.5, np.nan, np.inf, -np.inf], V2_NUMPY[datatype])
    # Python's json.dumps (tritonclient's JSON inputs) writes the literals NaN, Infinity
    python = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2],
                                     "data": values.tolist()}]}).encode()
    assert b"NaN" in python
    # an answer's strings, sent back, nested to the shape
    answered = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2],
                                         "data": [[1.5, "NaN"], ["Infinity", "-Infinity"]]}]})
    for body in (python, answered):
        decoded = decode_request(body, None).inputs["x"]
        assert decoded.dtype == V2_NUMPY[datatype]
        np.testing.assert_array_equal(decoded, values.reshape(2, 2))


@pytest.mark.parametrize(("body", "message"), [
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["nan"]}]}',
     r"data does not hold FP32 values \('nan' is not a number, NaN, Infinity or -Infinity\)"),
    (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [NaN]}]}',
     "INT64 data holds non-integer values"),
    (b"[" * 100_000 + b"NaN" + b"]" * 100_000, "request body is not valid JSON"),
])
def test_non_finite_words_are_taken_only_where_they_mean_a_float(body: bytes,
                                                                 message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_request(body, None)


def test_binary_answers_keep_the_ieee_bits_of_non_finite_values() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 2.0], np.float32)
    request = InferRequest(inputs={}, outputs=None, binary_default=True)
    body, length = encode_response("tiny", 1, request, {"y": values})
    assert length is not None
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), values)


def test_binary_outputs_follow_the_header_in_order() -> None:
    request = InferRequest(inputs={}, outputs=(RequestedOutput("y", binary=True),
                                               RequestedOutput("t", binary=True),
                                               RequestedOutput("m", binary=False)))
    outputs = _outputs()
    body, length = encode_response("tiny", 1, request, outputs)
    assert length is not None
    header = orjson.loads(body[:length])
    sizes = {o["name"]: o.get("parameters", {}).get("binary_data_size") for o in header["outputs"]}
    assert sizes["m"] is None
    rest = body[length:]
    y = np.frombuffer(rest[:sizes["y"]], dtype=np.float32).reshape(1, 2)
    np.testing.assert_array_equal(y, outputs["y"])
    t = deserialize_bytes("t", rest[sizes["y"]:], 2)
    assert list(t) == [b"ok", b"\xc3\xa9"]


def test_binary_data_output_parameter_makes_every_output_binary() -> None:
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],' \
           b' "parameters": {"binary_data_output": true}}'
    request = decode_request(body, None)
    _, length = encode_response("tiny", 1, request, {"y": np.zeros(2, np.float32)})
    assert length is not None


def test_classification_extension_is_refused_clearly() -> None:
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],' \
           b' "outputs": [{"name": "y", "parameters": {"classification": 3}}]}'
    with pytest.raises(InputError, match="classification extension is not supported"):
        decode_request(body, None)


def _one_input(datatype: str, shape: list[int], data: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape,
                                     "data": data}]})


@pytest.mark.parametrize(("datatype", "shape", "data", "nested"), [
    ("BYTES", [1], [["a"]], [1, 1]),  # deeper than the shape
    ("BYTES", [2, 1], [[["a"]], [["b"]]], [2, 1, 1]),
    ("BYTES", [2, 3], [["a", "b"], ["c", "d"], ["e", "f"]], [3, 2]),  # same count, other shape
    ("FP32", [1], [[1.0]], [1, 1]),
    ("INT64", [2, 3], [[1, 2], [3, 4], [5, 6]], [3, 2]),
    ("BOOL", [2], [[True, False]], [1, 2]),
    ("BF16", [1], [[1.0]], [1, 1]),
])
def test_data_nested_other_than_the_shape_is_refused(datatype: str, shape: list[int],
                                                     data: object, nested: list[int]) -> None:
    """V2 `data` is flat or nested to exactly the shape; anything else is a 400 naming it."""
    with pytest.raises(InputError) as refused:
        decode_request(_one_input(datatype, shape, data), None)
    assert str(refused.value) == (
        f"input 'x' has shape {shape} but its data is nested as {nested}; "
        "give it flat or nested to exactly that shape")


@pytest.mark.parametrize(("datatype", "shape", "data"), [
    ("BYTES", [2, 1], [["a"], ["b"]]),
    ("BYTES", [2, 1], ["a", "b"]),
    ("BYTES", [1], "a"),
    ("FP32", [2, 2], [[1, 2], [3, 4]]),
    ("FP32", [2, 2], [1, 2, 3, 4]),
    ("INT32", [2, 0], [[], []]),
    ("INT32", [2, 0], []),
    ("BF16", [1, 2], [[1.0, 2.0]]),
])
def test_data_flat_or_nested_to_the_shape_is_accepted(datatype: str, shape: list[int],
                                                      data: object) -> None:
    array = decode_request(_one_input(datatype, shape, data), None).inputs["x"]
    assert list(array.shape) == shape


@pytest.mark.parametrize(("data", "shown"), [
    (["a", 7, "b"], "int 7 at element 1"),
    ([["a", "b"], ["c", None]], "NoneType None at element 3"),
    (["a", {"k": "v" * 100}], "dict {'k': 'vvvvvvvvvvvvvvvvvvvvvvvvvvvvvv... at element 1"),
])
def test_a_bytes_element_that_is_no_string_is_named(data: list, shown: str) -> None:
    """The message named only the type: which of thousands of elements was it?"""
    from surge.protocol.tensors import tensor_from_list

    shape = (2, 2) if isinstance(data[0], list) else (len(data),)
    with pytest.raises(InputError, match=re.escape(f"BYTES data must be strings, got {shown}")):
        tensor_from_list("text", "BYTES", shape, data)


@pytest.mark.parametrize(("datatype", "data", "expected"), [
    # numpy reads these lists as float64: the largest values were called non-integer
    ("UINT64", [2**64 - 1, 1], [2**64 - 1, 1]),
    ("INT64", [-(2**63), 2**63 - 1], [-(2**63), 2**63 - 1]),
    ("BOOL", [1, 0], [True, False]),
])
def test_json_data_at_the_edges_of_its_type_is_exact(datatype: str, data: list,
                                                     expected: list) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype,
                                     "shape": [len(data)], "data": data}]})
    assert decode_request(body, None).inputs["x"].tolist() == expected


@pytest.mark.parametrize(("datatype", "data", "message"), [
    ("INT64", [2**63, -1], "INT64 data holds values outside its range"),  # was non-integer
    ("UINT64", [2**64], "UINT64 data holds values outside its range"),
    ("BOOL", [2, 0], "BOOL data holds integers other than 0 and 1"),  # was true
    ("BOOL", [0.5], "data does not hold BOOL values"),  # was true
    ("BF16", [1e39], "BF16 data holds values outside its range"),  # was infinity
    ("BF16", ["1.5"], "data does not hold BF16 values"),  # a string FP32 refuses
])
def test_json_data_its_type_cannot_hold_is_refused(datatype: str, data: list,
                                                   message: str) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": datatype,
                                   "shape": [len(data)], "data": data}]}).encode()
    with pytest.raises(InputError, match=message):
        decode_request(body, None)

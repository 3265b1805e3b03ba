"""JSON `data` a datatype cannot take is refused naming the input, the value and its element,
as Triton refuses it: true/false for a number type (numpy read them as 1 and 0), a string or
null for an integer type or BOOL. The body's bytes tell when no data can hold true or false,
and then a large number tensor is not looked through."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

import surge.protocol.tensors
from surge.errors import InputError
from surge.protocol.rest import data_may_hold_bools, decode_request
from surge.server.app import V2App
from tests.unit.protocol.test_front_end_guards import FakeEngine, _call


def _body(datatype: str, data: Any, shape: list[int] | None = None, **extra: Any) -> bytes:
    given = {"name": "x", "datatype": datatype,
             "shape": shape if shape is not None else [len(data)], "data": data}
    return orjson.dumps({"inputs": [given], **extra})


@pytest.mark.parametrize(("datatype", "data", "shape", "named"), [
    ("INT8", [1, True], None, "true at element 1"),
    ("INT64", [False, 2], None, "false at element 0"),
    ("UINT64", [2**64 - 1, True], None, "true at element 1"),
    ("FP32", [0.5, True], None, "true at element 1"),
    ("FP16", [[1.0, 2.0], [False, 3.0]], [2, 2], "false at element 2"),
    ("BF16", [1.5, True], None, "true at element 1"),
    ("INT32", [True, False], None, "true at element 0"),  # was "does not hold INT32 values"
])
def test_true_or_false_in_a_number_type_is_refused_naming_it(
        datatype: str, data: list, shape: list[int] | None, named: str) -> None:
    with pytest.raises(InputError, match=rf"input 'x': data does not hold {datatype} values "
                                         rf"\({named}: true and false are for BOOL inputs"):
        decode_request(_body(datatype, data, shape), None)


@pytest.mark.parametrize(("datatype", "data", "named"), [
    ("INT32", [1, "2"], "'2' at element 1: give numbers"),
    ("UINT8", [1, None], "null at element 1: give numbers"),
    ("INT16", [1, {"v": 2}], "{'v': 2} at element 1: give numbers"),
    ("BOOL", [True, "yes"], "'yes' at element 1: give true, false, 0 or 1"),
    ("BOOL", [None, False], "null at element 0: give true, false, 0 or 1"),
])
def test_a_string_or_null_in_an_integer_or_bool_type_is_named(datatype: str, data: list,
                                                              named: str) -> None:
    with pytest.raises(InputError, match=rf"data does not hold {datatype} values \({named}\)"):
        decode_request(_body(datatype, data), None)


def test_bools_elsewhere_in_the_body_do_not_hide_one_in_the_data() -> None:
    body = _body("FP32", [1.0, True], outputs=[{"name": "y", "parameters": {"binary_data": True}}],
                 parameters={"sequence_start": False, "flags": [[True]]})
    with pytest.raises(InputError, match="true at element 1"):
        decode_request(body, None)


@pytest.mark.parametrize(("datatype", "data", "expected"), [
    ("BOOL", [True, False, 1, 0], [True, False, True, False]),  # 0 and 1 stay BOOL's
    ("FP32", [1.0, "NaN", 2], None),
    ("INT8", [1, 0, -1], [1, 0, -1]),
])
def test_data_of_its_type_is_still_taken(datatype: str, data: list, expected: list | None
                                         ) -> None:
    body = _body(datatype, data, outputs=[{"name": "y", "parameters": {"binary_data": False}}])
    array = decode_request(body, None).inputs["x"]
    assert array.shape == (len(data),)
    if expected is not None:
        assert array.tolist() == expected


@pytest.mark.parametrize(("extra", "data", "may"), [
    ({}, [1.0, 2.0], False),
    ({"outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, [1.0, 2.0], False),
    ({"parameters": {"sequence_start": True, "sequence_end": False}}, [1.0], False),
    ({"outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, [1.0, True], True),
    ({"id": "true"}, [1.0], True),  # the word in a string: looked through, to be safe
    ({"id": "t" * 300}, [1.0], True),  # text past the letters looked at: looked through
    ({"id": "t" * 200}, [1.0], False),
])
def test_the_body_bytes_tell_when_no_data_holds_true_or_false(extra: dict[str, Any],
                                                              data: list, may: bool) -> None:
    body = _body("FP32", data, **extra)
    assert data_may_hold_bools(body, len(body), orjson.loads(body)) is may


def test_a_number_tensor_without_true_or_false_is_not_looked_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The common path: a large FP32 list, from a client that sets binary_data, is read by
    numpy alone."""
    looked: list[str] = []
    real = surge.protocol.tensors._check_elements
    monkeypatch.setattr(surge.protocol.tensors, "_check_elements",
                        lambda name, *args: (looked.append(name), real(name, *args))[1])
    outputs = [{"name": "y", "parameters": {"binary_data": True}}]
    decode_request(_body("FP32", [0.5] * 10_000, outputs=outputs), None)
    assert looked == []
    with pytest.raises(InputError):
        decode_request(_body("FP32", [0.5] * 9_999 + [True], outputs=outputs), None)
    assert looked == ["x"]


def test_the_http_answer_is_a_400_naming_input_and_value() -> None:
    status, answer = asyncio.run(_call(V2App(FakeEngine()), "POST", "/v2/models/double/infer",
                                       _body("INT8", [1, True])))
    assert status == 400
    error = orjson.loads(answer)["error"]
    assert "input 'x'" in error
    assert "true at element 1" in error


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16"])
def test_a_body_not_in_utf8_is_refused_not_read_past_the_bool_check(encoding: str) -> None:
    """Python's parser, which reads a body holding the bytes `NaN`, takes UTF-16 when given
    bytes: there `true` is not the bytes the check counts, and INT8 [1, true] was read as
    [1, 1]. The characters of the id put the bytes `NaN` in the body."""
    text = ('{"inputs":[{"name":"x","datatype":"INT8","shape":[2],"data":[1,true]}],'
            '"id":"\u614e\u004e", "parameters": {"n": NaN}}')
    with pytest.raises(InputError, match="request body is not valid JSON"):
        decode_request(text.encode(encoding), None)


def test_a_utf8_body_with_a_byte_order_mark_is_refused_with_or_without_nan() -> None:
    """orjson refuses the BOM; the fallback for NaN took it, a body's fate hanging on a NaN."""
    for data in ("[1.0]", "[NaN]"):
        body = (b"\xef\xbb\xbf" + b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],'
                b'"data":' + data.encode() + b"}]}")
        with pytest.raises(InputError, match="request body is not valid JSON"):
            decode_request(body, None)


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "BF16"])
def test_null_in_a_float_type_is_named_as_json_writes_it(datatype: str) -> None:
    """It was named `None`, a word the JSON the client wrote does not hold."""
    with pytest.raises(InputError, match=rf"data does not hold {datatype} values \(null is not "
                                         r"a number, NaN, Infinity or -Infinity\)"):
        decode_request(_body(datatype, [1.5, None]), None)

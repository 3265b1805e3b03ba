"""Hypothesis fuzzing of the request decoders: bad input is an InputError, never a crash."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surge.datatypes import V2_DATATYPES
from surge.errors import InputError
from surge.protocol.grpc_codec import decode_infer_request
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.rest import decode_request

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

input_entries = st.fixed_dictionaries(
    {"name": st.text(max_size=4) | st.integers(), "datatype": st.sampled_from(V2_DATATYPES)
     | st.text(max_size=5), "shape": st.lists(st.integers(-2, 4), max_size=3) | json_values},
    optional={"data": json_values | st.lists(st.integers(-300, 300) | st.floats(
        allow_nan=False, allow_infinity=False) | st.text(max_size=3), max_size=8),
              "parameters": st.fixed_dictionaries({}, optional={
                  "binary_data_size": st.integers(-4, 64) | json_values})},
)

request_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(input_entries, max_size=3) | json_values},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)}))
              | json_values,
              "parameters": st.dictionaries(st.sampled_from(
                  ["priority", "timeout", "binary_data_output"]), json_values),
              "id": json_values},
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_input_errors(call: object) -> None:
    with contextlib.suppress(InputError):  # any other exception fails the test
        call()  # type: ignore[operator]


@FUZZ
@given(request_bodies, st.binary(max_size=64), st.booleans())
def test_structured_requests_decode_or_raise_input_error(
    header: dict, binary: bytes, with_binary: bool
) -> None:
    head = json.dumps(header).encode()
    if with_binary:
        _only_input_errors(lambda: decode_request(head + binary, len(head)))
    else:
        _only_input_errors(lambda: decode_request(head, None))


@FUZZ
@given(st.binary(max_size=256), st.integers(0, 300) | st.none())
def test_arbitrary_bytes_decode_or_raise_input_error(body: bytes, length: int | None) -> None:
    if length is not None and length > len(body):
        length = len(body)
    _only_input_errors(lambda: decode_request(body, length))


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=3), st.sampled_from(V2_DATATYPES) | st.text(max_size=4),
                          st.lists(st.integers(-2, 4), max_size=3), st.binary(max_size=32)),
                max_size=3), st.booleans())
def test_grpc_requests_decode_or_raise_input_error(tensors: list, raw: bool) -> None:
    message = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, data in tensors:
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            message.raw_input_contents.append(data)
        else:
            tensor.contents.fp32_contents.extend(np.frombuffer(data[: len(data) // 4 * 4],
                                                               dtype=np.float32).tolist())
    _only_input_errors(lambda: decode_infer_request(message))


@pytest.mark.parametrize(("datatype", "value"), [
    ("FP32", 1e300), ("FP16", 70000), ("INT8", 300), ("UINT8", -1), ("INT32", 2**40),
])
def test_a_json_value_outside_the_datatype_range_is_an_input_error(datatype: str,
                                                                   value: float) -> None:
    head = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": [value]}]}
    with pytest.raises(InputError, match="outside its range"):
        decode_request(json.dumps(head).encode(), None)


def test_values_at_the_edge_of_the_range_are_kept_exactly() -> None:
    head = {"inputs": [{"name": "x", "datatype": "INT8", "shape": [2], "data": [-128, 127]},
                       {"name": "y", "datatype": "FP16", "shape": [1], "data": [65504.0]}]}
    inputs = decode_request(json.dumps(head).encode(), None).inputs
    assert inputs["x"].tolist() == [-128, 127]
    assert inputs["y"].tolist() == [65504.0]

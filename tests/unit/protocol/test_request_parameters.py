"""The scheduling parameters of a request (`priority`, `timeout`) as both wires carry them."""

from __future__ import annotations

import numpy as np
import pytest

from surge.errors import InputError
from surge.protocol.grpc_codec import decode_infer_request
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.rest import decode_request

# `"id": "NaN"`: a body holding NaN is read again by Python's parser when orjson refuses it, and
# Python's parser takes integers of any size (orjson refuses one past a float's range).
_HUGE = "9" * 400
MAX_UINT64 = 2**64 - 1  # priority and timeout are uint64, as in Triton


def _json(parameter: str, value: str) -> bytes:
    return (b'{"id": "NaN", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1],'
            b' "data": [1]}], "parameters": {"' + parameter.encode() + b'": '
            + value.encode() + b"}}")


@pytest.mark.parametrize("parameter", ["priority", "timeout"])
@pytest.mark.parametrize("value", [_HUGE, str(MAX_UINT64 + 1)])
def test_an_integer_past_uint64_is_refused_over_http(parameter: str, value: str) -> None:
    # Before: a timeout of 400 digits was taken, and the deadline it made (timeout / 1e6)
    # raised OverflowError: HTTP 500. A priority of any size was taken as it came.
    with pytest.raises(InputError, match=f"parameter '{parameter}' must be a non-negative "
                                         f"integer.* up to {MAX_UINT64}"):
        decode_request(_json(parameter, value), None)


def test_the_largest_uint64_is_taken_over_http() -> None:
    request = decode_request(_json("timeout", str(MAX_UINT64)).replace(b"NaN", b"r"), None)
    assert request.timeout_us == MAX_UINT64


def _grpc(**params: tuple[str, object]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[1])
    message.raw_input_contents.append(np.ones(1, np.float32).tobytes())
    for key, (kind, value) in params.items():
        setattr(message.parameters[key], kind, value)
    return message


def test_tritonclients_uint64_priority_and_int64_timeout_are_taken_over_grpc() -> None:
    request = decode_infer_request(_grpc(priority=("uint64_param", MAX_UINT64),
                                         timeout=("int64_param", 2**63 - 1)))
    assert (request.priority, request.timeout_us) == (MAX_UINT64, 2**63 - 1)

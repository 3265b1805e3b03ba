"""A refused input is named by the datatype the client sent: BF16 words travel as uint16, yet
the 400 says BF16 on every transport (JSON, the binary extension, gRPC raw contents)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surge.errors import InputError
from surge.pipeline.accept import Accept
from surge.protocol.grpc_codec import decode_infer_request
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.rest import decode_request
from surge.runtimes.base import Signature, TensorSpec

VALUES = [1.0, -2.0, 0.5, 3.0]
WORDS = np.array(VALUES, dtype=np.float32).view(np.uint32) >> 16  # BF16: FP32's upper half


def _json() -> dict[str, np.ndarray]:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "BF16", "shape": [1, 4],
                                   "data": [VALUES]}]}).encode()
    return decode_request(body, None).inputs


def _binary() -> dict[str, np.ndarray]:
    raw = WORDS.astype("<u2").tobytes()
    head = json.dumps({"inputs": [{"name": "x", "datatype": "BF16", "shape": [1, 4],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return decode_request(head + raw, len(head)).inputs


def _grpc() -> dict[str, np.ndarray]:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="BF16", shape=[1, 4])
    message.raw_input_contents.append(WORDS.astype("<u2").tobytes())
    return decode_infer_request(message).inputs


TRANSPORTS = {"json": _json, "binary": _binary, "grpc": _grpc}


def _signature(datatype: str, shape: tuple[int, ...]) -> Signature:
    return Signature((TensorSpec("x", datatype, shape),), (TensorSpec("y", "FP32", (-1, 1)),))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bf16_sent_to_an_fp32_input_is_refused_as_bf16(transport: str) -> None:
    inputs = TRANSPORTS[transport]()
    with pytest.raises(InputError) as refused:
        _signature("FP32", (-1, 4)).validate_inputs(inputs)
    assert str(refused.value) == "input 'x' expects FP32 [-1, 4], got BF16 [1, 4]"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bf16_of_the_wrong_shape_is_refused_as_bf16(transport: str) -> None:
    inputs = TRANSPORTS[transport]()
    with pytest.raises(InputError) as refused:
        _signature("BF16", (-1, 2)).validate_inputs(inputs)
    assert str(refused.value) == "input 'x' expects BF16 [-1, 2], got BF16 [1, 4]"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bf16_still_fits_a_bf16_input_as_its_words(transport: str) -> None:
    inputs = TRANSPORTS[transport]()
    _signature("BF16", (-1, 4)).validate_inputs(inputs)
    assert inputs["x"].dtype == np.uint16
    assert inputs["x"].tolist() == [WORDS.tolist()]


def test_uint16_sent_to_an_fp32_input_is_still_named_uint16() -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "UINT16", "shape": [1, 4],
                                   "data": [1, 2, 3, 4]}]}).encode()
    with pytest.raises(InputError, match=r"got UINT16 \[1, 4\]$"):
        _signature("FP32", (-1, 4)).validate_inputs(decode_request(body, None).inputs)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bf16_sent_to_a_uint16_input_is_refused(transport: str) -> None:
    inputs = TRANSPORTS[transport]()
    signature = _signature("UINT16", (-1, 4))
    for check in (signature.validate_inputs, Accept(signature).check):
        with pytest.raises(InputError) as refused:
            check(inputs)
        assert str(refused.value) == "input 'x' expects UINT16 [-1, 4], got BF16 [1, 4]"
    assert Accept(_signature("BF16", (-1, 4))).check(inputs) is None

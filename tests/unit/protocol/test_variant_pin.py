"""The variant pin (`accuracy`, `variant` request parameters) and the `variant` response
parameter, over both codecs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surge.errors import InputError
from surge.protocol.grpc_codec import decode_infer_request, encode_infer_response
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.rest import decode_request, encode_response

INPUT = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}


def rest(parameters: dict[str, object]) -> bytes:
    return json.dumps({"inputs": [INPUT], "parameters": parameters}).encode()


def test_rest_reads_the_pin() -> None:
    assert decode_request(rest({}), None).variant is None
    assert decode_request(rest({"variant": "int8-static"}), None).variant == "int8-static"
    full = decode_request(rest({"accuracy": "full"}), None)
    assert full.full_accuracy
    assert full.variant is None


@pytest.mark.parametrize(("parameters", "message"), [
    ({"accuracy": "low"}, "parameter 'accuracy' must be 'full'"),
    ({"variant": 3}, "parameter 'variant' must be a variant name"),
    ({"variant": ""}, "parameter 'variant' must be a variant name"),
    ({"accuracy": "full", "variant": "a"}, "not both"),
])
def test_rest_refuses_a_bad_pin(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_request(rest(parameters), None)


def test_rest_response_names_the_variant() -> None:
    request = decode_request(rest({}), None)
    outputs = {"y": np.ones((1, 2), np.float32)}
    body, _ = encode_response("m", 1, request, outputs, {"variant": "int8-static"})
    assert json.loads(body)["parameters"] == {"variant": "int8-static"}
    plain, _ = encode_response("m", 1, request, outputs)
    assert "parameters" not in json.loads(plain)


def test_grpc_reads_the_pin_and_names_the_variant() -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend(
        [1, 2])
    message.parameters["variant"].string_param = "int8-static"
    decoded = decode_infer_request(message)
    assert decoded.variant == "int8-static"
    message.parameters["accuracy"].string_param = "full"
    with pytest.raises(InputError, match="not both"):
        decode_infer_request(message)
    response = encode_infer_response("m", 1, decoded, {"y": np.ones((1, 2), np.float32)},
                                     {"variant": "original"})
    assert response.parameters["variant"].string_param == "original"

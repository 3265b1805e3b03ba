"""The binary tensor extension's parameters as Triton reads them: `binary_data_output` and
`binary_data` are booleans, an input carries exactly one of `data` and `binary_data_size`, an
output is requested once, and an empty `outputs` list asks for every output."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import orjson
import pytest

from surge.errors import InputError
from surge.protocol.grpc_codec import decode_infer_request
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.rest import decode_request, encode_response
from surge.server.app import V2App
from tests.unit.protocol.test_front_end_guards import FakeEngine, _call

X = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}


def _decode(body: dict[str, Any]) -> Any:
    return decode_request(json.dumps(body).encode(), None)


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], {}])
def test_binary_data_output_must_be_a_boolean(value: object) -> None:
    """Before: any value Python takes as true asked for binary outputs ("false" too)."""
    with pytest.raises(InputError, match="'binary_data_output' must be true or false"):
        _decode({"inputs": [X], "parameters": {"binary_data_output": value}})
    with pytest.raises(InputError, match="'binary_data_output' must be true or false"):
        _decode({"inputs": [X], "outputs": [{"name": "y"}],
                 "parameters": {"binary_data_output": value}})


@pytest.mark.parametrize("value", ["false", 1, None])
def test_an_outputs_binary_data_must_be_a_boolean(value: object) -> None:
    with pytest.raises(InputError, match="output 'y' parameter 'binary_data' must be true or "
                                         "false"):
        _decode({"inputs": [X], "outputs": [{"name": "y", "parameters": {"binary_data": value}}]})


def test_booleans_still_select_json_or_binary() -> None:
    request = _decode({"inputs": [X], "parameters": {"binary_data_output": True},
                       "outputs": [{"name": "y", "parameters": {"binary_data": False}},
                                   {"name": "z"}]})
    assert [(o.name, o.binary) for o in request.outputs] == [("y", False), ("z", True)]
    assert _decode({"inputs": [X], "parameters": {"binary_data_output": False}}
                   ).binary_default is False


def test_an_input_with_data_and_binary_data_size_is_refused() -> None:
    """Before: the binary bytes were read and `data` dropped without a word (Triton: 400)."""
    header = orjson.dumps({"inputs": [{**X, "data": [9.0, 9.0],
                                       "parameters": {"binary_data_size": 8}}]})
    body = header + np.array([1.0, 2.0], np.float32).tobytes()
    with pytest.raises(InputError, match="input 'x' has both 'data' and 'binary_data_size'"):
        decode_request(body, len(header))
    with pytest.raises(InputError, match="has both 'data' and 'binary_data_size'"):
        _decode({"inputs": [{**X, "parameters": {"binary_data_size": 0}}]})
    with pytest.raises(InputError, match="has both 'data' and 'binary_data_size'"):
        _decode({"inputs": [{**X, "parameters": {"binary_data_size": None}}]})


def test_an_empty_outputs_list_asks_for_every_output() -> None:
    """Before: `"outputs": []` asked for no output, and a 200 answer carried none."""
    request = _decode({"inputs": [X], "outputs": [], "parameters": {"binary_data_output": True}})
    assert request.outputs is None
    assert request.output_names is None
    payload, length = encode_response("m", 1, request, {"y": np.ones(2, np.float32)})
    assert length is not None
    assert json.loads(payload[:length])["outputs"][0]["parameters"] == {"binary_data_size": 8}


def test_an_output_requested_twice_is_refused() -> None:
    """Before: answered once (an output placed twice written into one place only)."""
    with pytest.raises(InputError, match="output 'y' is requested twice"):
        _decode({"inputs": [X], "outputs": [{"name": "y"}, {"name": "y"}]})


def test_an_output_requested_twice_over_grpc_is_refused() -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    message.outputs.add(name="y")
    message.outputs.add(name="y")
    with pytest.raises(InputError, match="output 'y' is requested twice"):
        decode_infer_request(message)


@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": [X], "parameters": {"binary_data_output": "false"}},
     "'binary_data_output' must be true or false, got 'false'"),
    ({"inputs": [{**X, "parameters": {"binary_data_size": 8}}]},
     "has both 'data' and 'binary_data_size'"),
    ({"inputs": [X], "outputs": [{"name": "y"}, {"name": "y"}]}, "requested twice"),
])
def test_over_http_each_is_a_400_with_its_error(body: dict[str, Any], message: str) -> None:
    app = V2App(FakeEngine())
    status, answer = asyncio.run(_call(app, "POST", "/v2/models/double/infer",
                                       orjson.dumps(body)))
    assert status == 400
    assert message in orjson.loads(answer)["error"]

"""gRPC codec: raw and typed contents in, raw contents out; error mapping to status codes."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from surge.errors import (
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    NotFoundError,
    QueueFullError,
    WorkerCrashedError,
)
from surge.protocol.errors import grpc_code, http_error, retry_after_header
from surge.protocol.grpc_codec import decode_infer_request, encode_infer_response
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.tensors import deserialize_bytes, serialize_bytes


def test_raw_input_contents_decode_by_position() -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    s = np.array([[b"a", b"bc"]], dtype=object)
    message = pb.ModelInferRequest(model_name="tiny", id="7")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    message.inputs.add(name="s", datatype="BYTES", shape=[1, 2])
    message.raw_input_contents.extend([x.tobytes(), serialize_bytes(s)])
    message.parameters["priority"].int64_param = 1
    message.parameters["timeout"].int64_param = 2500
    message.outputs.add(name="y")
    request = decode_infer_request(message)
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.inputs["s"].tolist() == [[b"a", b"bc"]]
    assert (request.priority, request.timeout_us, request.request_id) == (1, 2500, "7")
    assert request.output_names == ["y"]


def test_typed_contents_decode_with_their_datatype() -> None:
    message = pb.ModelInferRequest(model_name="tiny")
    tensor = message.inputs.add(name="n", datatype="INT64", shape=[1, 3])
    tensor.contents.int64_contents.extend([1, -2, 3])
    strings = message.inputs.add(name="s", datatype="BYTES", shape=[2])
    strings.contents.bytes_contents.extend([b"x", b"yz"])
    request = decode_infer_request(message)
    assert request.inputs["n"].dtype == np.int64
    assert request.inputs["n"].tolist() == [[1, -2, 3]]
    assert request.inputs["s"].tolist() == [b"x", b"yz"]
    assert request.outputs is None


def _classification(message: Any, count: int) -> None:
    message.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    message.outputs.add(name="y").parameters["classification"].int64_param = count


def _typed(contents: Any, **fields: list[Any]) -> None:
    for field, values in fields.items():
        getattr(contents, field).extend(values)


@pytest.mark.parametrize(("build", "message"), [
    (lambda m: (m.inputs.add(name="x", datatype="FP32", shape=[2]),
                m.raw_input_contents.append(b"\0" * 4)),
     r"input 'x' expects 8 bytes for FP32 \[2\], got 4"),
    (lambda m: (m.inputs.add(name="x", datatype="FP32", shape=[1]),
                m.inputs.add(name="y", datatype="FP32", shape=[1]),
                m.raw_input_contents.append(b"\0" * 4)),
     "raw_input_contents has 1 entries for 2 inputs"),
    (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.extend(
        [1.0]), r"input 'x' has shape \[3\] \(3 elements\) but 1 values in fp32_contents"),
    (lambda m: m.inputs.add(name="x", datatype="FP16", shape=[1]),
     "FP16 travels only in raw_input_contents"),
    (lambda m: None, "request has no inputs"),
    # Typed contents outside the datatype's range are refused, not wrapped (300 -> 44).
    (lambda m: m.inputs.add(name="x", datatype="UINT8", shape=[2]).contents.uint_contents.extend(
        [1, 300]), "input 'x': uint_contents holds values outside UINT8's range"),
    (lambda m: m.inputs.add(name="x", datatype="INT16", shape=[1]).contents.int_contents.extend(
        [100000]), "outside INT16's range"),
    (lambda m: (m.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.extend(
        [1.0]), m.raw_input_contents.append(b"\0" * 4)),
     "input 'x' has both contents and raw_input_contents"),
    (lambda m: _classification(m, 3), "output 'y': the classification extension is not supported"),
    # Values in another datatype's field were dropped without a word.
    (lambda m: _typed(m.inputs.add(name="s", datatype="BYTES", shape=[1]).contents,
                      bytes_contents=[b"a"], int_contents=[7]),
     "input 's' is BYTES, whose values go in bytes_contents, but int_contents holds values"),
    (lambda m: _typed(m.inputs.add(name="x", datatype="FP32", shape=[1]).contents,
                      fp32_contents=[1.0], fp64_contents=[2.0]),
     "fp64_contents holds values"),
])
def test_bad_grpc_requests_raise_input_errors(build: object, message: str) -> None:
    request = pb.ModelInferRequest(model_name="m")
    build(request)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        decode_infer_request(request)


def test_a_class_count_of_zero_asks_for_no_classification_as_over_http() -> None:
    message = pb.ModelInferRequest(model_name="m")
    _classification(message, 0)
    assert decode_infer_request(message).outputs[0].name == "y"  # type: ignore[index]


def test_response_carries_raw_output_contents() -> None:
    request = decode_infer_request(_one_input())
    outputs = {"y": np.array([[1.0, 2.0]], np.float32), "t": np.array([b"q"], dtype=object)}
    response = encode_infer_response("tiny", 2, request, outputs)
    assert response.model_version == "2"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", "FP32", [1, 2]), ("t", "BYTES", [1])]
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[0], np.float32), [1.0, 2.0])
    assert deserialize_bytes("t", response.raw_output_contents[1], 1).tolist() == [b"q"]


def _one_input() -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="tiny")
    message.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    return message


@pytest.mark.parametrize(("error", "status", "code"), [
    (InputError("bad"), 400, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError("no"), 404, grpc.StatusCode.NOT_FOUND),
    (QueueFullError("full", retry_after_s=0.2), 503, grpc.StatusCode.UNAVAILABLE),
    (ModelNotReadyError("wait"), 503, grpc.StatusCode.UNAVAILABLE),
    (WorkerCrashedError("died"), 503, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError("late"), 504, grpc.StatusCode.DEADLINE_EXCEEDED),
    (RuntimeError("bug"), 500, grpc.StatusCode.INTERNAL),
])
def test_errors_map_to_http_status_and_grpc_code(error: Exception, status: int,
                                                  code: grpc.StatusCode) -> None:
    assert http_error(error)[0] == status
    assert grpc_code(error) == code


def test_retry_after_is_whole_seconds_only_for_admission_rejections() -> None:
    assert retry_after_header(QueueFullError("full", retry_after_s=0.2)) == "1"
    assert retry_after_header(QueueFullError("full", retry_after_s=2.5)) == "3"
    assert retry_after_header(DeadlineExceededError("late")) is None


def test_internal_errors_do_not_leak_their_message() -> None:
    assert http_error(RuntimeError("secret path /x"))[1] == "internal error: RuntimeError"

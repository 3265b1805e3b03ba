"""The generate extension (Triton's `/generate` and `/generate_stream`): plain JSON values to
tensors of the model's datatypes and shapes, outputs back as scalars and lists, through the
HTTP app with a fake engine."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from surge.engine.interface import ModelHandle
from surge.engine.metrics import SurgeMetrics
from surge.errors import InputError, NotFoundError
from surge.protocol.types import InferRequest
from surge.repository import ModelConfig
from surge.runtimes.base import Signature, TensorSpec
from surge.server.app import V2App
from surge.server.generate import (
    decode_generate,
    generate_answer,
    input_tensor,
    nested_shape,
    tensor_shape,
)
from surge.server.keys import ApiKey, KeyRing, Scope

FP32_ROW = {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
TEXT = {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}


def _tensor(spec: dict[str, Any], value: object, batched: bool = True) -> np.ndarray:
    return input_tensor(spec, value, batched)


@pytest.mark.parametrize(("datatype", "value", "dtype", "expected"), [
    ("FP32", 1.5, np.float32, [1.5]),
    ("FP64", -2, np.float64, [-2.0]),
    ("FP16", 0.5, np.float16, [0.5]),
    ("INT8", -7, np.int8, [-7]),
    ("INT16", 300, np.int16, [300]),
    ("INT32", 7, np.int32, [7]),
    ("INT64", 2**40, np.int64, [2**40]),
    ("UINT8", 255, np.uint8, [255]),
    ("UINT16", 65535, np.uint16, [65535]),
    ("UINT32", 2**32 - 1, np.uint32, [2**32 - 1]),
    ("UINT64", 2**63, np.uint64, [2**63]),
    ("BOOL", True, np.bool_, [True]),
    ("FP32", "NaN", np.float32, [float("nan")]),
])
def test_a_scalar_becomes_a_one_element_tensor_of_the_models_datatype(
        datatype: str, value: object, dtype: type, expected: list[Any]) -> None:
    array = _tensor({"name": "v", "datatype": datatype, "shape": [-1]}, value, batched=False)
    assert array.dtype == np.dtype(dtype)
    assert array.shape == (1,)
    np.testing.assert_array_equal(array, np.array(expected, dtype=dtype))


def test_bf16_values_travel_as_their_words() -> None:
    array = _tensor({"name": "v", "datatype": "BF16", "shape": [-1]}, [1.0, -2.0], batched=False)
    assert array.dtype == np.uint16
    assert array.tolist() == [0x3F80, 0xC000]


def test_a_string_becomes_a_bytes_element_shaped_for_a_batching_model() -> None:
    array = _tensor(TEXT, "héllo")
    assert array.shape == (1, 1)
    assert array[0, 0] == "héllo".encode()


def test_a_list_of_strings_fills_the_innermost_variable_dimension() -> None:
    array = _tensor({"name": "t", "datatype": "BYTES", "shape": [-1, -1]}, ["a", "b", "c"])
    assert array.shape == (1, 3)
    assert array.ravel().tolist() == [b"a", b"b", b"c"]


def test_a_flat_list_is_spread_over_fixed_dimensions_as_triton_does() -> None:
    assert _tensor(FP32_ROW, [1, 2, 3, 4]).shape == (1, 4)
    assert _tensor(FP32_ROW, list(range(8))).shape == (2, 4)
    assert tensor_shape("x", (-1, 2, -1), (6,), True) == (1, 2, 3)
    assert tensor_shape("x", (3,), (3,), False) == (3,)
    assert tensor_shape("x", (), (), False) == ()


def test_a_nested_list_keeps_its_shape_with_a_batch_dimension_put_in_front() -> None:
    array = _tensor({"name": "m", "datatype": "INT64", "shape": [-1, 2, 3]},
                    [[1, 2, 3], [4, 5, 6]])
    assert array.shape == (1, 2, 3)
    assert array[0, 1].tolist() == [4, 5, 6]
    whole = _tensor({"name": "m", "datatype": "INT64", "shape": [-1, 2, 3]},
                    [[[1, 2, 3], [4, 5, 6]]])
    assert whole.shape == (1, 2, 3)


def test_a_nested_list_of_a_model_that_does_not_batch_is_taken_as_it_is() -> None:
    spec = {"name": "m", "datatype": "FP32", "shape": [2, 2]}
    assert _tensor(spec, [[1, 2], [3, 4]], batched=False).shape == (2, 2)
    with pytest.raises(InputError, match=r"input 'm' is nested as \[2, 2\], which does not fit"):
        tensor_shape("m", (2, 2, 2), (2, 2), False)


@pytest.mark.parametrize(("value", "message"), [
    ([[1, 2], [3]], r"input 'v': the nested list is ragged: element 1 has shape \[1\], "
                    r"element 0 \[2\]"),
    ([[1, 2], 3], "ragged"),
    ({"a": 1}, "input 'v': values must be strings, numbers or bools .*got an object"),
    (None, "got null"),
    ([1, None], "got null"),
])
def test_values_that_are_no_tensor_are_refused(value: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        nested_shape("v", value)


def test_nesting_deeper_than_a_tensor_may_have_is_refused() -> None:
    value: object = 1
    for _ in range(40):
        value = [value]
    with pytest.raises(InputError, match="nested past 16 lists"):
        nested_shape("v", value)


@pytest.mark.parametrize(("spec", "value", "message"), [
    (FP32_ROW, [1, 2, 3], r"input 'x': 3 value\(s\) do not fill its shape \[-1, 4\]; give a "
                          "multiple of 4 values"),
    ({"name": "x", "datatype": "FP32", "shape": [3]}, [1, 2], "do not fill its shape"),
    (FP32_ROW, [[1, 2, 3]], r"input 'x' is nested as \[1, 3\], which does not fit its shape"),
    (FP32_ROW, ["a", "b", "c", "d"], "input 'x': data does not hold FP32 values"),
    ({"name": "n", "datatype": "INT8", "shape": [-1]}, 300, "INT8 data holds values outside"),
    ({"name": "n", "datatype": "INT32", "shape": [-1]}, 1.5, "INT32 data holds non-integer"),
    (TEXT, 5, "input 'text': BYTES data must be strings, got int 5"),
    ({"name": "b", "datatype": "BOOL", "shape": [-1]}, "yes", "does not hold BOOL values"),
])
def test_values_that_do_not_fit_the_input_name_it(spec: dict[str, Any], value: object,
                                                  message: str) -> None:
    with pytest.raises(InputError, match=message):
        _tensor(spec, value)


INPUTS = [FP32_ROW, {"name": "n", "datatype": "INT64", "shape": [-1, 3]}]


def _decode(body: dict[str, Any], inputs: list[dict[str, Any]] = INPUTS) -> InferRequest:
    return decode_generate(orjson.dumps(body), inputs, True)


def test_the_body_gives_inputs_parameters_and_an_id() -> None:
    request = _decode({"x": [1, 2, 3, 4], "n": [1, 2, 3], "id": "r1", "parameters": {
        "priority": 2, "timeout": 5000, "variant": "int8", "sequence_id": 9,
        "sequence_start": True, "temperature": 0.2}})
    assert request.inputs["x"].shape == (1, 4)
    assert request.inputs["n"].tolist() == [[1, 2, 3]]
    assert (request.request_id, request.priority, request.timeout_us) == ("r1", 2, 5000)
    assert (request.variant, request.sequence_id, request.sequence_start) == ("int8", 9, True)
    assert request.outputs is None  # every output


def test_an_input_may_be_given_in_parameters_as_triton_reads_them() -> None:
    request = _decode({"x": [1, 2, 3, 4], "parameters": {"n": [1, 2, 3]}})
    assert request.inputs["n"].tolist() == [[1, 2, 3]]


@pytest.mark.parametrize(("body", "message"), [
    ({"x": [1, 2, 3, 4]}, r"missing input 'n': the body must give every input of the model "
                          r"\(x, n\)"),
    ({"x": [1, 2, 3, 4], "n": [1, 2, 3], "nn": 1}, "unknown input 'nn': the model's inputs "
                                                   "are x, n; request parameters go in"),
    ({"x": [1, 2, 3, 4], "n": [1, 2, 3], "parameters": {"n": [1, 2, 3]}},
     "input 'n' is given twice"),
    ({"x": [1, 2, 3, 4], "n": [1, 2, 3], "parameters": {"priority": -1}},
     "parameter 'priority' must be a non-negative integer"),
    ({"x": [1, 2, 3, 4], "n": [1, 2, 3], "parameters": {"accuracy": "low"}},
     "parameter 'accuracy' must be 'full'"),
    ({"x": [1, 2, 3, 4], "n": [1, 2, 3], "parameters": [1]}, "'parameters' must be a JSON object"),
    ({"x": [1, 2, 3, 4], "n": [1, 2, 3], "id": 7}, "request 'id' must be a string"),
])
def test_bodies_that_do_not_fit_the_model_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        _decode(body)


def test_a_body_that_is_no_json_object_is_refused() -> None:
    with pytest.raises(InputError, match="request body must be a JSON object"):
        decode_generate(b"[1, 2]", INPUTS, True)
    with pytest.raises(InputError, match="request body is not valid JSON"):
        decode_generate(b"{", INPUTS, True)


def test_an_input_named_id_is_the_input() -> None:
    request = _decode({"id": "abc"}, [{"name": "id", "datatype": "BYTES", "shape": [-1]}])
    assert request.inputs["id"].tolist() == [b"abc"]
    assert request.request_id == ""


def _answer(outputs: dict[str, np.ndarray], request_id: str = "",
            variant: str | None = None) -> dict[str, Any]:
    request = InferRequest(inputs={}, outputs=None, request_id=request_id)
    return generate_answer("m", 3, request, outputs, variant)


def test_single_values_answer_as_scalars_and_the_rest_as_flat_lists() -> None:
    answer = _answer({
        "y": np.array([[1.5, 2.5], [3.5, 4.5]], np.float32),
        "count": np.array([[7]], np.int64),
        "text": np.array([["hé".encode()]], dtype=object),
        "words": np.array([b"a", b"b"], dtype=object),
        "flag": np.array([True]),
        "bad": np.array([np.nan, np.inf], np.float32),
    }, request_id="r1", variant="int8")
    assert answer == {"model_name": "m", "model_version": "3", "id": "r1", "variant": "int8",
                      "y": [1.5, 2.5, 3.5, 4.5], "count": 7, "text": "hé",
                      "words": ["a", "b"], "flag": True, "bad": ["NaN", "Infinity"]}


def test_an_output_named_as_a_key_of_the_answer_is_refused_not_dropped() -> None:
    with pytest.raises(InputError, match="output 'model_name' has the name of a key of the "
                                         "generate answer .*: use /infer"):
        _answer({"model_name": np.array([1])})


# -- through the HTTP app ----------------------------------------------------------------------

SIGNATURE = Signature(inputs=(TensorSpec("x", "FP32", (-1, 4)),
                              TensorSpec("text", "BYTES", (-1, 1))),
                      outputs=(TensorSpec("y", "FP32", (-1, 4)),
                               TensorSpec("shout", "BYTES", (-1, 1))), max_batch_size=8)


class FakeEngine:
    """Serves `m` (y = 2x, shout = the text in capitals); `cold` is in the repository but not
    loaded."""

    def __init__(self) -> None:
        self.metrics = SurgeMetrics()
        self.calls: list[dict[str, Any]] = []

    def model(self, name: str, version: int | None = None) -> ModelHandle:
        if name != "m":
            raise NotFoundError(f"model {name!r} is not loaded")
        return ModelHandle("m", 1, (1,), ModelConfig(name="m", max_batch_size=8), SIGNATURE,
                           "onnxruntime_onnx")

    def index(self) -> list[dict[str, str]]:
        return [{"name": "m", "version": "1", "state": "READY", "reason": ""},
                {"name": "cold", "version": "", "state": "EVICTED", "reason": ""}]

    async def infer(self, name: str, version: int | None, inputs: dict[str, np.ndarray],
                    **options: Any) -> dict[str, np.ndarray]:
        self.model(name)
        self.calls.append({"inputs": inputs, **options})
        shout = np.array([[t.upper() for t in row] for row in inputs["text"]], dtype=object)
        return {"y": inputs["x"] * 2, "shout": shout}


async def _call(app: V2App, path: str, body: bytes, method: str = "POST",
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, dict, bytes]:
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


BODY = orjson.dumps({"x": [1, 2, 3, 4], "text": "hi", "parameters": {"priority": 1}})


def test_generate_answers_plain_json_through_the_inference_path() -> None:
    engine = FakeEngine()
    status, headers, body = asyncio.run(_call(V2App(engine), "/v2/models/m/generate", BODY))
    assert status == 200, body
    assert headers[b"content-type"] == b"application/json"
    assert orjson.loads(body) == {"model_name": "m", "model_version": "1",
                                  "y": [2.0, 4.0, 6.0, 8.0], "shout": "HI"}
    assert engine.calls[0]["priority"] == 1
    assert engine.calls[0]["inputs"]["text"].shape == (1, 1)
    metric = engine.metrics.requests.labels("m", "success", "http")._value.get()
    assert metric == 1


def test_generate_stream_answers_one_server_sent_event() -> None:
    status, headers, body = asyncio.run(_call(
        V2App(FakeEngine()), "/v2/models/m/versions/1/generate_stream", BODY))
    assert status == 200, body
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert body.startswith(b"data: ")
    assert body.endswith(b"\n\n")
    assert orjson.loads(body[len(b"data: "):])["shout"] == "HI"


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v2/models/nope/generate", BODY, 404, "model 'nope'"),
    ("/v2/models/cold/generate", BODY, 503, "model 'cold' is not loaded (EVICTED): /generate "
                                            "needs its inputs"),
    ("/v2/models/m/generate", b'{"x": [1, 2, 3, 4]}', 400, "missing input 'text'"),
    ("/v2/models/m/generate_stream", b'{"x": [[1, 2], [3]], "text": "a"}', 400, "ragged"),
    ("/v2/models/m/generate", b"not json", 400, "not valid JSON"),
])
def test_generate_errors_are_statuses_with_a_json_error(path: str, body: bytes, status: int,
                                                        message: str) -> None:
    got, headers, answer = asyncio.run(_call(V2App(FakeEngine()), path, body))
    assert got == status
    assert headers[b"content-type"] == b"application/json"
    assert message in orjson.loads(answer)["error"]


def test_generate_is_post_only_and_needs_an_inference_key() -> None:
    status, headers, _ = asyncio.run(_call(V2App(FakeEngine()), "/v2/models/m/generate", b"",
                                           method="GET"))
    assert (status, headers[b"allow"]) == (405, b"POST")
    app = V2App(FakeEngine(), api_key="k")
    status, _, _ = asyncio.run(_call(app, "/v2/models/m/generate", BODY))
    assert status == 401
    status, _, _ = asyncio.run(_call(app, "/v2/models/m/generate", BODY,
                                     headers=((b"authorization", b"Bearer k"),)))
    assert status == 200


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_generate_needs_the_inference_scope_as_infer_does(route: str) -> None:
    keys = KeyRing([ApiKey("reader", Scope.READ), ApiKey("caller", Scope.INFER)])
    app = V2App(FakeEngine(), keys=keys)
    path = f"/v2/models/m/{route}"
    status, _, answer = asyncio.run(_call(app, path, BODY,
                                          headers=((b"authorization", b"Bearer reader"),)))
    assert status == 403, answer
    status, _, _ = asyncio.run(_call(app, path, BODY,
                                     headers=((b"authorization", b"Bearer caller"),)))
    assert status == 200


# -- what the first version got wrong -----------------------------------------------------------

@pytest.mark.parametrize(("body", "key"), [
    (b'{"x": [1, 2, 3, 4], "n": [1, 2, 3], "x": [5, 6, 7, 8]}', "x"),
    (b'{"x": [1, 2, 3, 4], "n": [1, 2, 3], "\\u0078": [5, 6, 7, 8]}', "x"),
    (b'{"x": [NaN, 2, 3, 4], "n": [1, 2, 3], "n": [4, 5, 6]}', "n"),
    (b'{"x": [1, 2, 3, 4], "n": [1, 2, 3], "parameters": {"priority": 1, "priority": 9}}',
     "priority"),
    (b'{"x": [1, 2, 3, 4], "n": [1, 2, 3], "parameters": {}, "parameters": {"priority": 9}}',
     "parameters"),
    (b'{"x": [1, 2, 3, 4], "n": [1, 2, 3], "id": "a", "id": "b"}', "id"),
])
def test_a_key_given_twice_is_refused_not_kept_last(body: bytes, key: str) -> None:
    """orjson keeps a repeated key's last value: one of the two inputs was dropped unseen."""
    with pytest.raises(InputError, match=f"request body: key '{key}' is given twice"):
        decode_generate(body, INPUTS, True)


@pytest.mark.parametrize("nested", [b"[" * 1000 + b"]" * 1000,
                                    b'{"b": ' * 1000 + b"1" + b"}" * 1000])
def test_parameters_nested_deep_are_read_without_running_out_of_frames(nested: bytes) -> None:
    body = b'{"x": [1, 2, 3, 4], "n": [1, 2, 3], "parameters": {"a": ' + nested + b"}}"
    assert decode_generate(body, INPUTS, True).inputs["n"].tolist() == [[1, 2, 3]]


def test_a_key_that_is_also_a_value_is_no_repeated_key() -> None:
    spec = {"name": "text", "datatype": "BYTES", "shape": [-1]}
    request = decode_generate(b'{"text": "text", "id": "text"}', [spec], False)
    assert (request.inputs["text"].tolist(), request.request_id) == ([b"text"], "text")


def test_an_input_named_parameters_is_the_input() -> None:
    spec = {"name": "parameters", "datatype": "INT64", "shape": [-1]}
    request = decode_generate(b'{"parameters": [5, 6]}', [spec], False)
    assert request.inputs["parameters"].tolist() == [5, 6]
    assert request.priority == 0


def test_a_flat_list_is_measured_without_a_call_per_element(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten million numbers took five seconds of Python calls, holding the interpreter."""
    from surge.server import generate

    calls: list[int] = []
    measure = generate.nested_shape

    def counted(name: str, value: object, depth: int = 0) -> tuple[int, ...]:
        calls.append(depth)
        return measure(name, value, depth)

    monkeypatch.setattr(generate, "nested_shape", counted)
    assert generate.nested_shape("v", list(range(1000))) == (1000,)
    assert generate.nested_shape("v", [[1.5, 2], [3, 4]]) == (2, 2)
    assert len(calls) == 1 + 1 + 2


CLASHING = Signature(inputs=SIGNATURE.inputs,
                     outputs=(TensorSpec("id", "FP32", (-1, 4)),
                              TensorSpec("shout", "BYTES", (-1, 1))), max_batch_size=8)


class ClashingEngine(FakeEngine):
    """`m` with an output named `id`, a key of the generate answer."""

    def model(self, name: str, version: int | None = None) -> ModelHandle:
        handle = super().model(name, version)
        return ModelHandle("m", 1, (1,), handle.config, CLASHING, "onnxruntime_onnx")

    async def infer(self, name: str, version: int | None, inputs: dict[str, np.ndarray],
                    **options: Any) -> dict[str, np.ndarray]:
        answer = await super().infer(name, version, inputs, **options)
        return {"id": answer.pop("y"), **answer}


def test_an_output_named_as_a_key_of_the_answer_is_refused_before_the_model_runs() -> None:
    """The model ran (a sequence model's state moved on) for an answer never sent."""
    engine = ClashingEngine()
    status, _, body = asyncio.run(_call(V2App(engine), "/v2/models/m/generate", BODY))
    assert status == 400
    assert "output 'id' has the name of a key of the generate answer" in orjson.loads(
        body)["error"]
    assert engine.calls == []


class FailedEngine(FakeEngine):
    """`broken` failed to load; `late` is loading."""

    def index(self) -> list[dict[str, str]]:
        return [{"name": "broken", "version": "", "state": "UNAVAILABLE", "reason": "bad file"},
                {"name": "late", "version": "", "state": "LOADING", "reason": ""}]


def test_a_model_that_failed_to_load_keeps_the_404_of_infer() -> None:
    """It was a 503 saying that one /infer would load it: /infer answers 404, loading none."""
    status, _, body = asyncio.run(_call(V2App(FailedEngine()), "/v2/models/broken/generate",
                                        BODY))
    assert (status, orjson.loads(body)["error"]) == (404, "model 'broken' is not loaded")


def test_a_model_being_loaded_is_a_503_to_send_again() -> None:
    status, _, body = asyncio.run(_call(V2App(FailedEngine()), "/v2/models/late/generate",
                                        BODY))
    assert status == 503
    assert "model 'late' is loading: /generate needs its inputs; send the request again" in (
        orjson.loads(body)["error"])

"""Each kind of bad request gets its 4xx status and a message naming the problem."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
from tests.integration.server.conftest import API_KEY, ServerProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _inputs(x_shape: list[int] | None = None, x_type: str = "FP32", **extra: object) -> dict:
    x_shape = x_shape or [1, 4]
    count = int(np.prod(x_shape))
    return {"inputs": [
        {"name": "x", "datatype": x_type, "shape": x_shape, "data": list(range(count))},
        {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
    ], **extra}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.http, headers=AUTH, timeout=30.0) as c:
        yield c


def test_a_valid_request_succeeds(client: httpx.Client) -> None:
    response = client.post("/v2/models/tiny/infer", json=_inputs())
    assert response.status_code == 200
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs == {"y": [1.0, 2.0, 3.0, 4.0], "m": [2, 4, 6]}


@pytest.mark.parametrize(("body", "status", "message"), [
    (_inputs([1, 5]), 400, "input 'x' expects FP32 [-1, 4], got FP32 [1, 5]"),
    (_inputs(x_type="FP64"), 400, "input 'x' expects FP32 [-1, 4], got FP64 [1, 4]"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}, 400,
     "missing input(s) ['n']"),
    ({"inputs": _inputs()["inputs"] + [
        {"name": "z", "datatype": "FP32", "shape": [1], "data": [0]}]}, 400,
     "unknown input 'z'"),
    (_inputs(outputs=[{"name": "nope"}]), 400, "unknown output 'nope'"),
    (_inputs(parameters={"priority": "high"}), 400, "parameter 'priority'"),
])
def test_bad_tensors_get_400_naming_input_expected_and_actual(
    client: httpx.Client, body: dict, status: int, message: str
) -> None:
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_invalid_json_gets_400(client: httpx.Client) -> None:
    response = client.post("/v2/models/tiny/infer", content=b'{"inputs": [')
    assert response.status_code == 400
    assert response.json()["error"].startswith("request body is not valid JSON")


def test_binary_size_mismatch_gets_400(client: httpx.Client) -> None:
    header = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 12}},
        {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
    ]}).encode()
    response = client.post("/v2/models/tiny/infer", content=header + b"\0" * 12,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert response.json()["error"] == "input 'x' expects 16 bytes for FP32 [1, 4], got 12"


def test_malformed_bytes_tensor_gets_400(client: httpx.Client) -> None:
    raw = struct.pack("<I", 100) + b"short"
    header = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    response = client.post("/v2/models/tiny/infer", content=header + raw,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert response.json()["error"] == "input 's': BYTES element 0 declares 100 bytes, 5 remain"


def test_bytes_tensor_for_a_numeric_input_names_both_types(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 4],
                        "data": ["a", "b", "c", "d"]},
                       {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 400
    assert "input 'x' expects FP32 [-1, 4], got BYTES [1, 4]" in response.json()["error"]


@pytest.mark.parametrize(("path", "message"), [
    ("/v2/models/nope/infer", "model 'nope'"),
    ("/v2/models/tiny/versions/7/infer", "no served version 7"),
])
def test_unknown_model_or_version_gets_404(client: httpx.Client, path: str, message: str) -> None:
    response = client.post(path, json=_inputs())
    assert response.status_code == 404
    assert message in response.json()["error"]


def test_readiness_of_a_version_not_served_is_404_not_a_503_saying_ready(
        client: httpx.Client) -> None:
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    response = client.get("/v2/models/tiny/versions/7/ready")
    assert response.status_code == 404
    assert "no served version 7" in response.json()["error"]


def test_the_index_filter_must_be_a_boolean(client: httpx.Client) -> None:
    response = client.post("/v2/repository/index", json={"ready": "no"})
    assert response.status_code == 400
    assert response.json()["error"] == "'ready' must be true or false, got 'no'"
    assert client.post("/v2/repository/index", json={"ready": True}).status_code == 200


def test_body_over_the_limit_gets_413(client: httpx.Client) -> None:
    response = client.post("/v2/models/tiny/infer", content=b"0" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]


def test_path_escape_in_model_name_gets_400(client: httpx.Client) -> None:
    response = client.get("/v2/models/..%2Fetc")
    assert response.status_code in (400, 404)
    assert "error" in response.json()


def test_api_key_is_required_except_on_health(server: ServerProcess) -> None:
    assert httpx.get(f"{server.http}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.http}/v2/health/ready").status_code == 200
    response = httpx.post(f"{server.http}/v2/models/tiny/infer", json=_inputs())
    assert response.status_code == 401
    assert "API key" in response.json()["error"]
    wrong = httpx.get(f"{server.http}/v2/models/tiny", headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401
    assert httpx.post(f"{server.http}/v2/repository/index").status_code == 401


def test_metrics_endpoint_counts_requests_by_outcome(server: ServerProcess,
                                                     client: httpx.Client) -> None:
    client.post("/v2/models/tiny/infer", json=_inputs())
    client.post("/v2/models/tiny/infer", json=_inputs([1, 5]))
    text = httpx.get(server.metrics, headers=AUTH).text
    assert 'surge_requests_total{model="tiny",outcome="success",protocol="http"}' in text
    assert 'surge_requests_total{model="tiny",outcome="bad_request",protocol="http"}' in text


def test_compressed_body_is_refused_clearly(client: httpx.Client) -> None:
    response = client.post("/v2/models/tiny/infer", content=b"\x1f\x8b",
                           headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported Content-Encoding 'gzip'"


def test_unknown_routes_get_404_json(client: httpx.Client) -> None:
    for method, path in (("GET", "/v3"), ("GET", "/v2/models/tiny/bogus"),
                         ("DELETE", "/v2/models/tiny/bogus"), ("POST", "/v2/repository/zap")):
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "no route" in response.json()["error"] or "no model endpoint" in \
            response.json()["error"]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v2/models/tiny", "GET, HEAD"),
    ("GET", "/v2/models/tiny/infer", "POST"),
    ("PUT", "/v2/models/tiny/versions/1/infer", "POST"),
    ("POST", "/v2/models/tiny/versions/1/ready", "GET, HEAD"),
    ("POST", "/v2/health/ready", "GET, HEAD"),
    ("GET", "/v2/repository/index", "POST"),
    ("DELETE", "/v2/repository/models/tiny/unload", "POST"),
    ("POST", "/v2/systemsharedmemory/status", "GET, HEAD"),
    ("GET", "/v2/systemsharedmemory/region/r/register", "POST"),
    ("POST", "/v2/openapi.json", "GET, HEAD"),
    ("HEAD", "/v2/models/tiny/infer", "POST"),
])
def test_a_route_asked_with_another_method_gets_405_naming_the_allowed_ones(
        client: httpx.Client, method: str, path: str, allowed: str) -> None:
    """RFC 9110 15.5.6: 405 with `Allow`, not a 404 saying there is no such route."""
    response = client.request(method, path)
    assert response.status_code == 405, (method, path)
    assert response.headers["allow"] == allowed
    if method != "HEAD":
        assert response.json()["error"] == (
            f"method {method} is not allowed on {path}: use {allowed.replace(', ', ' or ')}")

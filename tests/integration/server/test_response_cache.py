"""The response cache in a real `surge serve --response-cache-bytes`: an identical request is
answered without the model running (its execution count stays), over HTTP (JSON and binary),
gRPC and tritonclient; statistics show Triton's cache_hit / cache_miss and Prometheus counts
them; a server without a cache serves a model that asks for one uncached, and says so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tests.integration.server.conftest import ServerProcess, start_server, triton_client
from tests.integration.server.models import tiny_onnx

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(240)

BASE = "max_batch_size: 8\ninstances: 1\nthreads: 1\nbatching: {max_queue_delay_ms: 0}\n"


def _repository(root: Path) -> Path:
    for name, config in (("cached", BASE + "response_cache: {enable: true}\n"),
                         ("plain", BASE)):
        tiny_onnx(root / name / "1" / "model.onnx")
        (root / name / "config.yaml").write_text(config)
    return root


@pytest.fixture(scope="module", params=["surge", "grpcio"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a 1 MB response cache, with each gRPC stack."""
    repo = _repository(tmp_path_factory.mktemp("cache-repo"))
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log",
                        "--response-cache-bytes", "1MB", "--grpc-server", request.param)
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def _body(value: float, outputs: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4},
        {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def _infer(served: ServerProcess, model: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{served.http}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {out["name"]: out["data"] for out in response.json()["outputs"]}


def _stats(served: ServerProcess, model: str) -> dict[str, Any]:
    response = httpx.get(f"{served.http}/v2/models/{model}/stats", timeout=30)
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = response.json()["model_stats"][0]
    return entry


def _counts(served: ServerProcess, model: str) -> tuple[int, int, int]:
    """(execution_count, cache_hit count, cache_miss count)."""
    stats = _stats(served, model)
    inference = stats["inference_stats"]
    return (stats["execution_count"], inference["cache_hit"]["count"],
            inference["cache_miss"]["count"])


def test_an_identical_request_does_not_run_the_model(served: ServerProcess) -> None:
    before = _counts(served, "cached")
    first = _infer(served, "cached", _body(10.0))
    second = _infer(served, "cached", _body(10.0))
    assert first == second == {"y": [11.0] * 4, "m": [2, 4, 6]}
    assert _counts(served, "cached") == (before[0] + 1, before[1] + 1, before[2] + 1)
    stats = _stats(served, "cached")["inference_stats"]
    assert stats["cache_hit"]["ns"] > 0
    assert stats["success"]["count"] >= 2


def test_different_inputs_or_outputs_miss(served: ServerProcess) -> None:
    _infer(served, "cached", _body(20.0))
    before = _counts(served, "cached")
    assert _infer(served, "cached", _body(21.0))["y"] == [22.0] * 4
    assert _infer(served, "cached", _body(20.0, ["y"])) == {"y": [21.0] * 4}
    assert _counts(served, "cached") == (before[0] + 2, before[1], before[2] + 2)


def test_a_binary_request_hits_the_answer_a_json_one_left(served: ServerProcess) -> None:
    _infer(served, "cached", _body(30.0, ["y", "m"]))
    before = _counts(served, "cached")
    x = np.full((1, 4), 30.0, np.float32).tobytes()
    n = np.array([[1, 2, 3]], np.int64).tobytes()
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                    "parameters": {"binary_data_size": len(x)}},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3],
                    "parameters": {"binary_data_size": len(n)}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}},
                    {"name": "m", "parameters": {"binary_data": False}}]}).encode()
    response = httpx.post(f"{served.http}/v2/models/cached/infer", content=header + x + n,
                          headers={"Inference-Header-Content-Length": str(len(header))},
                          timeout=30)
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:length])
    assert answer["outputs"][1]["data"] == [2, 4, 6]
    y = np.frombuffer(response.content[length:], np.float32)
    assert y.tolist() == [31.0] * 4
    # the same outputs asked for: only how they are sent differs, which follows the cache
    assert _counts(served, "cached") == (before[0], before[1] + 1, before[2])


def test_grpc_requests_hit_and_statistics_show_it(served: ServerProcess) -> None:
    request = pb.ModelInferRequest(model_name="cached", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4]),
        pb.ModelInferRequest.InferInputTensor(name="n", datatype="INT64", shape=[1, 3])],
        raw_input_contents=[np.full((1, 4), 40.0, np.float32).tobytes(),
                            np.array([[1, 2, 3]], np.int64).tobytes()])
    with grpc.insecure_channel(served.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cached"), timeout=30)
        answers = [stub.ModelInfer(request, timeout=30) for _ in range(2)]
        after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cached"), timeout=30)
    assert answers[0].raw_output_contents == answers[1].raw_output_contents
    old, new = before.model_stats[0], after.model_stats[0]
    assert new.execution_count == old.execution_count + 1
    assert new.inference_stats.cache_hit.count == old.inference_stats.cache_hit.count + 1
    assert new.inference_stats.cache_miss.count == old.inference_stats.cache_miss.count + 1


# Runs in tritonclient's venv: two identical requests on each client, then the statistics as
# each client decodes them.
CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
http_url, grpc_url = sys.argv[1:3]
result = {}
for name, module, url in (("http", httpclient, http_url), ("grpc", grpcclient, grpc_url)):
    client = module.InferenceServerClient(url)
    x = module.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), 50.0 if name == "http" else 51.0, np.float32))
    n = module.InferInput("n", [1, 3], "INT64")
    n.set_data_from_numpy(np.array([[1, 2, 3]], np.int64))
    ys = [client.infer("cached", [x, n]).as_numpy("y").tolist() for _ in range(2)]
    stats = client.get_inference_statistics("cached")
    if name == "grpc":
        stats = json.loads(__import__("google.protobuf.json_format", fromlist=["x"])
                           .MessageToJson(stats, preserving_proto_field_name=True))
    inference = stats["model_stats"][0]["inference_stats"]
    result[name] = {"ys": ys, "hits": int(inference["cache_hit"]["count"])}
print(json.dumps(result))
"""


def test_tritonclient_reads_cache_hits(served: ServerProcess) -> None:
    hits = _counts(served, "cached")[1]
    result = triton_client("-c", CLIENT, served.http.removeprefix("http://"), served.grpc)
    assert result.returncode == 0, result.stderr[-3000:] + served.output()[-2000:]
    decoded = json.loads(result.stdout)
    assert decoded["http"]["ys"] == [[[51.0] * 4]] * 2
    assert decoded["grpc"]["ys"] == [[[52.0] * 4]] * 2
    assert decoded["http"]["hits"] == hits + 1
    assert decoded["grpc"]["hits"] == hits + 2


def test_a_model_without_the_option_is_not_cached(served: ServerProcess) -> None:
    before = _counts(served, "plain")
    _infer(served, "plain", _body(60.0))
    _infer(served, "plain", _body(60.0))
    assert _counts(served, "plain") == (before[0] + 2, 0, 0)


def test_prometheus_counts_hits_and_misses(served: ServerProcess) -> None:
    _infer(served, "cached", _body(70.0))
    _infer(served, "cached", _body(70.0))
    text = httpx.get(f"{served.metrics}/metrics", timeout=30).text
    hits, misses = (_sample(text, f'surge_cache_{kind}_total{{model="cached"}}')
                    for kind in ("hits", "misses"))
    _, hit_count, miss_count = _counts(served, "cached")
    assert (hits, misses) == (hit_count, miss_count)
    assert _sample(text, "surge_response_cache_bytes") > 0


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def test_a_server_without_a_cache_serves_the_model_uncached(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    repo = _repository(tmp_path_factory.mktemp("uncached-repo"))
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log", "--models",
                        "cached")
    try:
        _infer(proc, "cached", _body(1.0))
        assert _infer(proc, "cached", _body(1.0))["y"] == [2.0] * 4
        assert _counts(proc, "cached") == (2, 0, 0)
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]
    assert ("model cached: config.yaml sets response_cache but the server has no response "
            "cache") in proc.output()


def test_the_config_echoes_the_cache_as_triton_does(served: ServerProcess) -> None:
    for model, enabled in (("cached", True), ("plain", False)):
        response = httpx.get(f"{served.http}/v2/models/{model}/config", timeout=30)
        assert response.json()["response_cache"] == {"enable": enabled}
        with grpc.insecure_channel(served.grpc) as channel:
            config = pb_grpc.GRPCInferenceServiceStub(channel).ModelConfig(
                pb.ModelConfigRequest(name=model), timeout=30).config
        assert config.HasField("response_cache")
        assert config.response_cache.enable is enabled

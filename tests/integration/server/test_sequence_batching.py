"""The sequence batcher with implicit state in a real `surge serve`: the running-sum model
answers each interleaved sequence with its own running sum over HTTP and gRPC (tritonclient's
`sequence_id`, `sequence_start`, `sequence_end`); two requests of one sequence in flight at
once run one after the other; the state tensors are hidden and refused; Triton's errors;
max_sequences; the live-sequences gauge; a reload drops every state."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, start_server, triton_client
from tests.integration.server.models import tiny_onnx
from tests.integration.server.sequence_models import accumulator_repository

pytestmark = pytest.mark.timeout(240)

CLIENT = str(Path(__file__).parent / "clients" / "triton_sequence.py")


@pytest.fixture(scope="module", params=["surge", "grpcio"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The running-sum model and a plain one, with each gRPC stack."""
    repo = accumulator_repository(tmp_path_factory.mktemp("sequence-repo"))
    tiny_onnx(repo / "plain" / "1" / "model.onnx")
    (repo / "plain" / "config.yaml").write_text("max_batch_size: 8\ninstances: 1\nthreads: 1\n")
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log",
                        "--grpc-server", request.param)
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def _body(value: float, **parameters: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [value] * 2}],
            "parameters": parameters}


def _post(served: ServerProcess, body: dict[str, Any], model: str = "acc") -> httpx.Response:
    return httpx.post(f"{served.http}/v2/models/{model}/infer", json=body, timeout=30)


def _sum(served: ServerProcess, value: float, **parameters: Any) -> float:
    response = _post(served, _body(value, **parameters))
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [out["name"] for out in outputs] == ["y"], "the state output is the server's own"
    return float(outputs[0]["data"][0])


def _error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]
    return message


def test_tritonclient_sequences_get_their_own_running_sums(served: ServerProcess) -> None:
    result = triton_client(CLIENT, served.http.removeprefix("http://"), served.grpc, "acc")
    assert result.returncode == 0, result.stderr[-3000:] + served.output()[-2000:]
    decoded = json.loads(result.stdout)
    for protocol in ("http", "grpc"):
        assert decoded[protocol]["sums"] == [[1.0, 10.0], [3.0, 30.0], [6.0, 60.0]], protocol
        assert "non-zero or non-empty sequence_id" in decoded[protocol]["no_id"]["message"]
        assert "must specify the sequence_start flag" in decoded[protocol]["no_start"]["message"]
    assert decoded["grpc"]["no_id"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert decoded["http"]["no_id"]["status"] == "400"
    assert decoded["http_inputs"] == decoded["grpc_inputs"] == ["x"]
    echoed = decoded["grpc_config"]
    assert echoed["state"][0]["input_name"] == "state_in"
    assert echoed["state"][0]["initial_state"][0]["zero_data"] is True
    assert echoed["oldest"]["max_candidate_sequences"] == 3
    assert echoed["max_sequence_idle_microseconds"] == "60000000"  # uint64 as a JSON string


def test_two_requests_of_one_sequence_in_flight_run_in_order(served: ServerProcess) -> None:
    _sum(served, 0.0, sequence_id=31, sequence_start=True)

    async def both() -> list[float]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(*(
                client.post(f"{served.http}/v2/models/acc/infer",
                            json=_body(value, sequence_id=31)) for value in (1.0, 2.0)))
        return sorted(float(r.json()["outputs"][0]["data"][0]) for r in responses)

    first, second = asyncio.run(both())
    assert second == 3.0, "the later one saw the state the earlier one left"
    assert first in (1.0, 2.0)
    assert _sum(served, 0.0, sequence_id=31, sequence_end=True) == 3.0


def test_the_state_tensors_are_hidden_and_refused(served: ServerProcess) -> None:
    metadata = httpx.get(f"{served.http}/v2/models/acc", timeout=30).json()
    assert [t["name"] for t in metadata["inputs"]] == ["x"]
    assert [t["name"] for t in metadata["outputs"]] == ["y"]
    body = _body(1.0, sequence_id=41, sequence_start=True)
    body["inputs"].append({"name": "state_in", "datatype": "FP32", "shape": [1, 2],
                           "data": [5.0, 5.0]})
    assert "'state_in' of model 'acc' is its implicit sequence state" in _error(
        _post(served, body))
    body = _body(1.0, sequence_id=41, sequence_start=True)
    body["outputs"] = [{"name": "state_out"}]
    assert "'state_out'" in _error(_post(served, body))
    config = httpx.get(f"{served.http}/v2/models/acc/config", timeout=30).json()
    assert "dynamic_batching" not in config
    assert config["sequence_batching"]["state"][0]["output_name"] == "state_out"


@pytest.mark.parametrize(("parameters", "message"), [
    ({}, "must specify a non-zero or non-empty sequence_id"),
    ({"sequence_id": 0, "sequence_start": True}, "non-zero or non-empty sequence_id"),
    ({"sequence_id": 999}, "sequence 999 to model 'acc' must specify the sequence_start flag"),
    ({"sequence_id": -3}, "'sequence_id' must be a non-negative integer"),
    ({"sequence_id": 5, "sequence_start": "yes"}, "'sequence_start' must be a bool"),
    ({"sequence_id": [1]}, "'sequence_id'"),
])
def test_bad_sequence_requests_are_400(served: ServerProcess, parameters: dict[str, Any],
                                       message: str) -> None:
    assert message in _error(_post(served, _body(1.0, **parameters)))


def test_a_model_without_sequence_batching_ignores_the_parameters(
        served: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4},
                       {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}],
            "parameters": {"sequence_id": 7, "sequence_end": True}}
    response = _post(served, body, "plain")
    assert response.status_code == 200, response.text


def _failures(served: ServerProcess) -> tuple[int, float]:
    """The model's `fail` count in its statistics, and its REJECTED failures as scraped."""
    stats = httpx.get(f"{served.http}/v2/models/acc/stats", timeout=30).json()
    fail = int(stats["model_stats"][0]["inference_stats"]["fail"]["count"])
    text = httpx.get(f"{served.metrics}/metrics", timeout=30).text
    found = re.search(r'^nv_inference_request_failure\{model="acc",reason="REJECTED",'
                      r'version="1"\} (\S+)$', text, re.MULTILINE)
    return fail, float(found.group(1)) if found else 0.0


def test_max_sequences_then_end_frees_a_slot(served: ServerProcess) -> None:
    ids = [51, 52, 53]
    for sequence_id in ids:
        _sum(served, 1.0, sequence_id=sequence_id, sequence_start=True)
    gauge = httpx.get(f"{served.metrics}/metrics", timeout=30).text
    assert 'surge_live_sequences{model="acc"} 3.0' in gauge
    fail, rejected = _failures(served)
    refused = _post(served, _body(1.0, sequence_id=54, sequence_start=True))
    assert "max_sequences" in _error(refused, 503)
    assert refused.headers["retry-after"] == "60"
    assert _failures(served) == (fail + 1, rejected + 1), "a refused start is a REJECTED failure"
    _sum(served, 1.0, sequence_id=51, sequence_end=True)
    assert _sum(served, 4.0, sequence_id=54, sequence_start=True) == 4.0
    for sequence_id in (52, 53, 54):
        _sum(served, 0.0, sequence_id=sequence_id, sequence_end=True)
    gauge = httpx.get(f"{served.metrics}/metrics", timeout=30).text
    assert 'surge_live_sequences{model="acc"} 0.0' in gauge


def test_a_reload_drops_every_state(served: ServerProcess) -> None:
    _sum(served, 2.0, sequence_id="kept", sequence_start=True)
    response = httpx.post(f"{served.http}/v2/repository/models/acc/load", timeout=120)
    assert response.status_code == 200, response.text
    assert "sequence 'kept' of model 'acc' was dropped with its state when the model was " \
        "reloaded" in _error(_post(served, _body(1.0, sequence_id="kept")))
    assert "must specify the sequence_start flag" in _error(
        _post(served, _body(1.0, sequence_id="never-started")))
    assert _sum(served, 1.0, sequence_id="kept", sequence_start=True, sequence_end=True) == 1.0

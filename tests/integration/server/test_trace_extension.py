"""Triton's trace extension against a real `surge serve --tracing console`: the settings read
and changed over HTTP (`/v2[/models/NAME]/trace/setting`) and gRPC (`TraceSetting`, both
stacks), the spans they let through (rate, count, OFF, a model's own settings), the errors,
the key scopes, several front ends, a server without an exporter, and tritonclient unmodified."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, start_server, triton_client
from tests.integration.server.models import make_repository

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(240)

READ_KEY, ADMIN_KEY = "trace-reader", "trace-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}
STARTED = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
           "trace_mode": "opentelemetry"}
ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
TINY = {"inputs": [*ROW["inputs"],
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}
SPAN_ID = re.compile(r'"surge\.request_id": "([^"]+)"')


def _serve(root: Path, *args: str) -> ServerProcess:
    """A server whose exporter hands spans on every 50 ms (the SDK's default is 5 s)."""
    keys = root / "keys.txt"
    keys.write_text(f"{READ_KEY} read\n{ADMIN_KEY} admin\n")
    saved = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "50"
    try:
        return start_server(make_repository(root / "repo", slow_delay_ms=1.0),
                            root / "server.log", "--api-keys-file", str(keys), *args)
    finally:
        if saved is None:
            del os.environ["OTEL_BSP_SCHEDULE_DELAY"]
        else:
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = saved


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = _serve(tmp_path_factory.mktemp("trace"), "--tracing", "console")
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


@pytest.fixture
def server(served: ServerProcess) -> Iterator[ServerProcess]:
    """The served server with `slow` traced on its own settings (the marker's model), put back
    to the settings it started with after the test."""
    _post(served, {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1"},
          "slow")
    yield served
    nulls = {"trace_level": None, "trace_rate": None, "trace_count": None}
    for model in (None, "tiny", "slow"):
        _post(served, nulls, model)


def _url(served: ServerProcess, model: str | None = None) -> str:
    return f"{served.http}/v2{f'/models/{model}' if model else ''}/trace/setting"


def _post(served: ServerProcess, body: Any, model: str | None = None) -> dict[str, Any]:
    answer = httpx.post(_url(served, model), json=body, headers=ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _infer(served: ServerProcess, model: str, count: int = 1) -> list[str]:
    """The request ids of `count` inferences of `model`, one after the other."""
    ids = []
    for _ in range(count):
        request_id = uuid.uuid4().hex
        answer = httpx.post(f"{served.http}/v2/models/{model}/infer",
                            json=TINY if model == "tiny" else ROW,
                            headers={**ADMIN, "x-request-id": request_id}, timeout=30)
        assert answer.status_code == 200, answer.text
        ids.append(request_id)
    return ids


def _traced(served: ServerProcess, ids: list[str]) -> list[str]:
    """Those of `ids` whose span was exported: known once the span of a later request of
    `slow` (always traced) is out, since spans are exported in the order they end."""
    marker = _infer(served, "slow")[0]
    deadline = time.monotonic() + 30.0
    while marker not in (exported := SPAN_ID.findall(served.output())):
        assert time.monotonic() < deadline, served.output()[-3000:]
        time.sleep(0.05)
    return [request_id for request_id in ids if request_id in exported]


def _stub(served: ServerProcess) -> Any:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(served.grpc))


def _grpc(served: ServerProcess, settings: dict[str, list[str]], model: str = "",
          key: str = ADMIN_KEY) -> dict[str, list[str]]:
    request = pb.TraceSettingRequest(model_name=model)
    for name, values in settings.items():
        request.settings[name].value.extend(values)
    answer = _stub(served).TraceSetting(request, metadata=(("authorization", f"Bearer {key}"),),
                                        timeout=30)
    return {name: list(value.value) for name, value in answer.settings.items()}


# -- the spans the settings let through -------------------------------------------------------
def test_trace_is_a_listed_extension(served: ServerProcess) -> None:
    assert "trace" in httpx.get(f"{served.http}/v2", headers=READ, timeout=30).json()[
        "extensions"]
    metadata = _stub(served).ServerMetadata(
        pb.ServerMetadataRequest(), metadata=(("authorization", f"Bearer {READ_KEY}"),),
        timeout=30)
    assert "trace" in metadata.extensions


def test_every_request_is_traced_as_the_server_starts(server: ServerProcess) -> None:
    assert httpx.get(_url(server), headers=READ, timeout=30).json() == STARTED
    ids = _infer(server, "tiny", 3)
    assert _traced(server, ids) == ids


def test_rate_2_traces_every_second_request(server: ServerProcess) -> None:
    assert _post(server, {"trace_rate": "2"}) == {**STARTED, "trace_rate": "2"}
    ids = _infer(server, "tiny", 6)
    assert _traced(server, ids) == ids[1::2]


def test_count_3_stops_after_three_traces(server: ServerProcess) -> None:
    assert _grpc(server, {"trace_count": ["3"]})["trace_count"] == ["3"]
    ids = _infer(server, "tiny", 5)
    assert _traced(server, ids) == ids[:3]
    assert httpx.get(_url(server), headers=READ, timeout=30).json()["trace_count"] == "0"


def test_off_stops_the_spans(server: ServerProcess) -> None:
    assert _post(server, {"trace_level": ["OFF"]})["trace_level"] == ["OFF"]
    ids = _infer(server, "tiny", 3)
    assert _traced(server, ids) == []
    _post(server, {"trace_level": ["TIMESTAMPS"]})
    again = _infer(server, "tiny", 2)
    assert _traced(server, again) == again


def test_a_models_own_settings_and_null_clearing(server: ServerProcess) -> None:
    _post(server, {"trace_level": ["OFF"]})
    own = _post(server, {"trace_level": ["TIMESTAMPS"], "trace_rate": "3"}, "tiny")
    assert own == {**STARTED, "trace_rate": "3"}
    assert httpx.get(_url(server), headers=READ, timeout=30).json()["trace_level"] == ["OFF"]
    ids = _infer(server, "tiny", 6)
    assert _traced(server, ids) == ids[2::3]
    cleared = _post(server, {"trace_level": None}, "tiny")  # the global OFF applies again
    assert cleared == {**STARTED, "trace_level": ["OFF"], "trace_rate": "3"}
    assert _traced(server, _infer(server, "tiny", 3)) == []


# -- errors and scopes -------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "named"), [
    (b'{"trace_rate": "often"}', "'trace_rate' must be an integer from 1"),
    (b'{"trace_rate": "0"}', "'trace_rate' must be an integer from 1"),
    (b'{"trace_count": "-3"}', "'trace_count' must be -1"),
    (b'{"trace_level": ["LOUD"]}', "unknown trace level 'LOUD'"),
    (b'{"trace_level": ["TENSORS"]}', "'TENSORS' is not supported"),
    (b'{"trace_file": "/tmp/t.json"}', "'trace_file' cannot be honoured"),
    (b'{"log_frequency": "10"}', "'log_frequency' cannot be honoured"),
    (b'{"trace_mode": "triton"}', "trace mode 'triton' is not served"),
    (b'{"rate": "2"}', "unknown trace setting 'rate'"),
    (b'{"trace_rate": "2", "trace_count": "x"}', "'trace_count'"),  # nothing else changes
    (b"[]", "JSON object"),
    (b"{", "not valid JSON"),
])
def test_a_bad_change_is_a_400_naming_it_and_changes_nothing(
        server: ServerProcess, body: bytes, named: str) -> None:
    for model in (None, "tiny"):
        answer = httpx.post(_url(server, model), content=body, headers=ADMIN, timeout=30)
        assert answer.status_code == 400, answer.text
        assert named in answer.json()["error"]
        assert httpx.get(_url(server, model), headers=READ, timeout=30).json() == STARTED


def test_an_unknown_model_is_a_404_and_another_method_a_405(server: ServerProcess) -> None:
    for answer in (httpx.get(_url(server, "nope"), headers=READ, timeout=30),
                   httpx.post(_url(server, "nope"), json={"trace_rate": "2"}, headers=ADMIN,
                              timeout=30)):
        assert answer.status_code == 404
        assert "model 'nope' is not in the repository" in answer.json()["error"]
    put = httpx.put(_url(server), json={}, headers=ADMIN, timeout=30)
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, HEAD, POST"


def test_changing_needs_an_admin_key(server: ServerProcess) -> None:
    assert httpx.get(_url(server), timeout=30).status_code == 401
    refused = httpx.post(_url(server, "tiny"), json={"trace_rate": "2"}, headers=READ,
                         timeout=30)
    assert refused.status_code == 403
    assert "needs 'admin'" in refused.json()["error"]
    with pytest.raises(grpc.RpcError) as raised:
        _grpc(server, {"trace_rate": ["2"]}, key=READ_KEY)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _grpc(server, {}, "tiny", key=READ_KEY) == {k: v if isinstance(v, list) else [v]
                                                      for k, v in STARTED.items()}


@pytest.mark.parametrize(("settings", "model", "code", "named"), [
    ({"trace_rate": ["0"]}, "", grpc.StatusCode.INVALID_ARGUMENT, "'trace_rate'"),
    ({"trace_count": ["-2"]}, "tiny", grpc.StatusCode.INVALID_ARGUMENT, "'trace_count'"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "", grpc.StatusCode.INVALID_ARGUMENT, "OFF"),
    ({"trace_sample": ["1"]}, "", grpc.StatusCode.INVALID_ARGUMENT, "unknown trace setting"),
    ({"trace_rate": ["2"]}, "nope", grpc.StatusCode.NOT_FOUND, "model 'nope'"),
])
def test_grpc_refuses_a_bad_change(server: ServerProcess, settings: dict[str, list[str]],
                                   model: str, code: grpc.StatusCode, named: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _grpc(server, settings, model)
    assert raised.value.code() == code
    assert named in raised.value.details()
    assert httpx.get(_url(server), headers=READ, timeout=30).json() == STARTED


CLIENT = """
import json, sys
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
http_url, grpc_url, key = sys.argv[1:4]
headers = {"authorization": "Bearer " + key}
http = httpclient.InferenceServerClient(http_url)
grpc = grpcclient.InferenceServerClient(grpc_url)
out = {"http_get": http.get_trace_settings(headers=headers),
       "http_model": http.update_trace_settings(
           model_name="tiny", settings={"trace_rate": "4", "trace_count": "9"},
           headers=headers),
       "grpc_model": grpc.get_trace_settings(model_name="tiny", headers=headers, as_json=True),
       "grpc_clear": grpc.update_trace_settings(
           model_name="tiny", settings={"trace_rate": None}, headers=headers, as_json=True),
       "grpc_global": grpc.update_trace_settings(
           settings={"trace_level": ["OFF"]}, headers=headers, as_json=True),
       "http_model_after": http.get_trace_settings(model_name="tiny", headers=headers)}
for name, call in [("http_error", lambda: http.update_trace_settings(
                       settings={"trace_rate": "0"}, headers=headers)),
                   ("grpc_error", lambda: grpc.update_trace_settings(
                       settings={"trace_level": ["TENSORS"]}, headers=headers))]:
    try:
        call()
        out[name] = None
    except InferenceServerException as exc:
        out[name] = [exc.status(), exc.message()]
print(json.dumps(out))
"""


def _as_json(grpc_answer: dict[str, Any]) -> dict[str, Any]:
    values = {k: v["value"] for k, v in grpc_answer["settings"].items()}
    return {k: v if k == "trace_level" else v[0] for k, v in values.items()}


def test_tritonclient_reads_and_updates_the_settings(server: ServerProcess) -> None:
    result = triton_client("-c", CLIENT, server.http.removeprefix("http://"), server.grpc,
                           ADMIN_KEY)
    assert result.returncode == 0, result.stderr[-3000:] + server.output()[-2000:]
    out = json.loads(result.stdout)
    assert out["http_get"] == STARTED
    assert out["http_model"] == {**STARTED, "trace_rate": "4", "trace_count": "9"}
    assert _as_json(out["grpc_model"]) == out["http_model"]
    assert _as_json(out["grpc_clear"]) == {**STARTED, "trace_count": "9"}
    assert _as_json(out["grpc_global"]) == {**STARTED, "trace_level": ["OFF"]}
    assert out["http_model_after"] == {**STARTED, "trace_level": ["OFF"], "trace_count": "9"}
    assert out["http_error"][0] == "400"
    assert "'trace_rate'" in out["http_error"][1]
    assert out["grpc_error"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "'TENSORS' is not supported" in out["grpc_error"][1]


# -- several front ends, the grpcio stack, a server without an exporter --------------------
def test_a_change_reaches_every_front_end_on_grpcio(tmp_path: Path) -> None:
    served = _serve(tmp_path, "--tracing", "console", "--frontends", "2",
                    "--grpc-server", "grpcio")
    try:
        changed = _grpc(served, {"trace_rate": ["5"], "trace_level": ["OFF"]}, "tiny")
        assert changed == {**{k: [v] for k, v in STARTED.items() if k != "trace_level"},
                           "trace_rate": ["5"], "trace_level": ["OFF"]}
        for _ in range(12):  # a new connection each: the kernel spreads them over both
            with httpx.Client(headers=READ, timeout=30) as client:
                read = client.get(_url(served, "tiny")).json()
            assert read == {**STARTED, "trace_rate": "5", "trace_level": ["OFF"]}
    finally:
        assert served.stop() == 0, served.output()[-3000:]


def test_without_tracing_the_level_is_off_and_a_change_is_refused(tmp_path: Path) -> None:
    served = _serve(tmp_path)
    try:
        assert httpx.get(_url(served), headers=READ, timeout=30).json() == {
            **STARTED, "trace_level": ["OFF"]}
        refused = httpx.post(_url(served, "tiny"), json={"trace_level": ["TIMESTAMPS"]},
                             headers=ADMIN, timeout=30)
        assert refused.status_code == 400
        assert "started without --tracing" in refused.json()["error"]
        with pytest.raises(grpc.RpcError) as raised:
            _grpc(served, {"trace_rate": ["2"]})
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--tracing console or --tracing otlp" in raised.value.details()
    finally:
        assert served.stop() == 0, served.output()[-3000:]

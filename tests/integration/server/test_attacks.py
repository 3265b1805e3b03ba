"""A server under attack stays up: idle and slow connections are closed, extra ones refused,
client-chosen names leave the metrics alone, broken or hostile models fail with short 4xx."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from tests.integration.server.conftest import API_KEY, ServerProcess, start_server
from tests.integration.server.models import make_repository

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_CONNECTIONS = 32
FILE_LIMIT = 256  # descriptors the server may hold while attacked; it holds ~60 at rest
TIMEOUT_S = 1.0  # header, body and idle timeouts of the attacked server
ALIAS_BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
                     for p, c in zip("abcdefg", "bcdefgh", strict=True))


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """tiny, plus a model with a corrupt file and one with an alias-bomb config; the process
    may open FILE_LIMIT descriptors."""
    root = make_repository(tmp_path_factory.mktemp("repo"), with_slow=False)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    (root / "bomb" / "1").mkdir(parents=True)
    (root / "bomb" / "1" / "model.onnx").write_bytes((root / "tiny" / "1" / "model.onnx")
                                                     .read_bytes())
    (root / "bomb" / "config.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + ALIAS_BOMB)
    log = tmp_path_factory.mktemp("log") / "server.log"
    server = start_server(root, log, "--max-connections", str(MAX_CONNECTIONS),
                          "--header-timeout", str(TIMEOUT_S), "--body-timeout", str(TIMEOUT_S),
                          "--idle-timeout", str(TIMEOUT_S), api_key=API_KEY)
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))
    yield server
    assert server.stop() == 0, server.output()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _open_idle(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        with contextlib.suppress(OSError):  # the listen backlog may refuse some
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5.0))
    return sockets


def _closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    """Whether the server closes `sock` within `wait_s` (whatever it sends first, such as
    gRPC's settings frame or a 400)."""
    deadline = time.monotonic() + wait_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def _answers(server: ServerProcess) -> bool:
    live = httpx.get(f"{server.http}/v2/health/live", timeout=5.0).status_code == 200
    metrics = httpx.get(server.metrics, headers=AUTH, timeout=5.0).status_code == 200
    with grpc.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        grpc_live = stub.ServerLive(pb.ServerLiveRequest(), timeout=5.0).live
    return live and metrics and grpc_live


def _server_descriptors(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


@pytest.mark.parametrize("port_of", ["http", "grpc", "metrics"])
def test_idle_connections_are_closed_and_extras_refused(
    attacked: ServerProcess, port_of: str
) -> None:
    port = _port(getattr(attacked, port_of))
    sockets = _open_idle(port, 2 * FILE_LIMIT)  # more than the server could hold open
    try:
        assert len(sockets) > FILE_LIMIT
        time.sleep(0.5)
        assert _server_descriptors(attacked) < FILE_LIMIT
        # After the header timeout every one of them has been let go, and all ports answer.
        assert all(_closed_by_server(s, 10 * TIMEOUT_S) for s in sockets)
        assert _answers(attacked)
    finally:
        for sock in sockets:
            sock.close()


def test_slow_headers_and_stalled_bodies_are_cut_off(attacked: ServerProcess) -> None:
    port = _port(attacked.http)
    with socket.create_connection(("127.0.0.1", port)) as slow_head, \
            socket.create_connection(("127.0.0.1", port)) as stalled_body:
        slow_head.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        stalled_body.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n"
                             b"Authorization: Bearer " + API_KEY.encode() +
                             b"\r\nContent-Length: 100\r\n\r\n{\"inputs\"")
        started = time.monotonic()
        assert _closed_by_server(slow_head, 10 * TIMEOUT_S)
        assert _closed_by_server(stalled_body, 10 * TIMEOUT_S)
        assert time.monotonic() - started < 10 * TIMEOUT_S
    assert _answers(attacked)


def test_oversized_request_head_gets_400(attacked: ServerProcess) -> None:
    response = httpx.get(f"{attacked.http}/v2/health/live",
                         headers={"x-filler": "a" * 100_000}, timeout=10.0)
    assert response.status_code == 400
    assert "request line and headers exceed 65536 bytes" in response.json()["error"]


def test_bytes_that_are_no_http_request_get_a_json_400(attacked: ServerProcess) -> None:
    """As every 4xx: JSON naming why (uvicorn answered in plain text)."""
    port = int(attacked.http.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head
    assert json.loads(body)["error"].startswith("invalid HTTP request: ")


def _metrics_text(server: ServerProcess) -> str:
    return httpx.get(server.metrics, headers=AUTH, timeout=10.0).text


def test_unknown_model_names_share_one_metric_label(attacked: ServerProcess) -> None:
    with httpx.Client(base_url=attacked.http, headers=AUTH, timeout=10.0) as client:
        for i in range(20):
            name = f"nosuchmodel{i}" + "x" * 100
            assert client.post(f"/v2/models/{name}/infer", content=b"{").status_code == 400
            assert client.post(f"/v2/models/{name}/infer", json={"inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}
            ).status_code == 404
    text = _metrics_text(attacked)
    assert "nosuchmodel" not in text
    assert 'surge_requests_total{model="_unknown",outcome="bad_request",protocol="http"}' in text


def test_grpc_checks_the_key_and_the_name_before_counting(attacked: ServerProcess) -> None:
    with grpc.insecure_channel(attacked.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in range(10):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(pb.ModelInferRequest(model_name=f"grpcname{i}"), timeout=5.0)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        key = (("authorization", f"Bearer {API_KEY}"),)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(pb.ModelInferRequest(model_name="tiny\n"), timeout=5.0, metadata=key)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        http = httpx.post(f"{attacked.http}/v2/models/tiny%0A/infer", headers=AUTH, content=b"{}")
        assert http.status_code == 400
        assert caught.value.details() == http.json()["error"]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(pb.ModelInferRequest(model_name="g" * 100_000), timeout=5.0,
                            metadata=key)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(caught.value.details()) < 1000
    text = _metrics_text(attacked)
    assert "grpcname" not in text
    assert "ggggg" not in text


@pytest.mark.parametrize("value", ["\u00b2", "1" * 5000, "-1", "1_2"])
def test_bad_header_length_values_get_400(attacked: ServerProcess, value: str) -> None:
    response = httpx.post(f"{attacked.http}/v2/models/tiny/infer", content=b"{}",
                          headers={**AUTH, "Inference-Header-Content-Length":
                                   value.encode("latin-1")}, timeout=10.0)
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]
    assert len(response.text) < 500


def test_failed_load_is_400_with_the_reason(attacked: ServerProcess) -> None:
    response = httpx.post(f"{attacked.http}/v2/repository/models/broken/load", headers=AUTH,
                          timeout=60.0)
    assert response.status_code == 400
    assert "failed to load" in response.json()["error"]
    assert "model.onnx" in response.json()["error"]
    with grpc.insecure_channel(attacked.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken"),
                                     timeout=60.0, metadata=(("authorization",
                                                              f"Bearer {API_KEY}"),))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_alias_bomb_config_gives_a_short_reason(attacked: ServerProcess) -> None:
    response = httpx.post(f"{attacked.http}/v2/repository/models/bomb/load", headers=AUTH,
                          timeout=60.0)
    assert response.status_code == 400
    assert "aliases" in response.json()["error"]
    assert len(response.content) < 1000
    index = httpx.post(f"{attacked.http}/v2/repository/index", headers=AUTH, timeout=10.0)
    assert index.status_code == 200
    assert len(index.content) < 2000
    bomb = next(e for e in index.json() if e["name"] == "bomb")
    assert "aliases" in bomb["reason"]


def test_wrong_key_refused_on_every_rpc(attacked: ServerProcess) -> None:
    wrong = (("authorization", "Bearer test-kez"),)
    with grpc.insecure_channel(attacked.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [(stub.ModelInfer, pb.ModelInferRequest(model_name="tiny")),
                 (stub.ModelMetadata, pb.ModelMetadataRequest(name="tiny")),
                 (stub.RepositoryIndex, pb.RepositoryIndexRequest()),
                 (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="tiny"))]
        for call, request in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=5.0, metadata=wrong)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    response = httpx.get(f"{attacked.http}/v2/models/tiny",
                         headers={"Authorization": "Bearer test-kez"})
    assert response.status_code == 401


def test_pipelined_requests_of_a_closed_connection_leave_no_errors(
        attacked: ServerProcess) -> None:
    """uvicorn marks only the newest request of a connection disconnected; the older pipelined
    ones wrote to the closed transport, each an ERROR traceback in the log."""
    body = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},'
            b' {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}')
    request = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
               b"\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    before = attacked.output().count("ERROR")
    for half_close in (False, True) * 5:
        with socket.create_connection(("127.0.0.1", _port(attacked.http))) as sock:
            sock.sendall(request * 3)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
    time.sleep(1.0)
    assert httpx.get(f"{attacked.http}/v2/health/ready").status_code == 200
    assert attacked.output().count("ERROR") == before, attacked.output()[-2000:]


def test_a_flood_of_bad_requests_writes_a_few_log_lines(attacked: ServerProcess) -> None:
    """500 connections sending bytes that are no HTTP request: each is answered 400, and
    the log gets at most a line and a count (before, one warning line each)."""
    before = attacked.output().count("Invalid HTTP request received.")
    for _ in range(500):
        with socket.create_connection(("127.0.0.1", _port(attacked.http)), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01\x00\xa5garbage\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    assert _answers(attacked)
    assert attacked.output().count("Invalid HTTP request received.") - before <= 2

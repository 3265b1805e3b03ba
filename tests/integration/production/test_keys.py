"""Keys on every port, with scopes: read (metadata, metrics), infer, admin (load/unload)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tests.cli_runner import run_cli
from tests.integration.production.conftest import Served, launch
from tests.integration.server.models import make_repository

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

KEYS = {"read": "reader-1", "infer": "client-2", "admin": "operator-3"}
TINY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}


def _auth(scope: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[scope]}"} if scope else {}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("keys")
    repo = make_repository(root / "repo", with_slow=False)
    key_file = root / "keys"
    key_file.write_text("# key scope\n" + "".join(f"{k} {s}\n" for s, k in KEYS.items()))
    served = launch(repo, root / "server.log", "--api-keys-file", str(key_file))
    yield served
    assert served.stop() == 0, served.output()


@pytest.mark.parametrize(("scope", "metadata", "infer", "load", "metrics"), [
    (None, 401, 401, 401, 401),
    ("read", 200, 403, 403, 200),
    ("infer", 200, 200, 403, 200),
    ("admin", 200, 200, 200, 200),
])
def test_http_scopes(keyed: Served, scope: str | None, metadata: int, infer: int, load: int,
                     metrics: int) -> None:
    headers = _auth(scope)
    assert httpx.get(f"{keyed.http}/v2/health/ready").status_code == 200  # probes need no key
    assert httpx.get(f"{keyed.http}/v2/models/tiny", headers=headers).status_code == metadata
    answer = httpx.post(f"{keyed.http}/v2/models/tiny/infer", json=TINY, headers=headers)
    assert answer.status_code == infer, answer.text
    if infer == 403:
        assert "needs 'infer'" in answer.json()["error"]
    loaded = httpx.post(f"{keyed.http}/v2/repository/models/tiny/load", headers=headers,
                        timeout=120)
    assert loaded.status_code == load, loaded.text
    assert httpx.get(keyed.metrics, headers=headers).status_code == metrics


@pytest.mark.parametrize(("scope", "infer_code", "load_code"), [
    (None, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
    ("read", grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
    ("infer", None, grpc.StatusCode.PERMISSION_DENIED),
])
def test_grpc_scopes(keyed: Served, scope: str | None, infer_code: grpc.StatusCode | None,
                     load_code: grpc.StatusCode) -> None:
    metadata = (("authorization", f"Bearer {KEYS[scope]}"),) if scope else ()
    request = pb.ModelInferRequest(model_name="tiny")
    for name, shape, kind, values in (("x", [1, 4], "FP32", "fp32_contents"),
                                      ("n", [1, 3], "INT64", "int64_contents")):
        tensor = request.inputs.add(name=name, datatype=kind, shape=shape)
        getattr(tensor.contents, values).extend(range(1, shape[1] + 1))
    with grpc.insecure_channel(keyed.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        try:
            stub.ModelInfer(request, metadata=metadata, timeout=30)
            code = None
        except grpc.RpcError as exc:
            code = exc.code()
        assert code == infer_code
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"),
                                     metadata=metadata, timeout=30)
        assert refused.value.code() == load_code


@pytest.mark.parametrize(("scope", "status", "register", "grpc_register"), [
    ("read", 200, 403, grpc.StatusCode.PERMISSION_DENIED),
    ("infer", 200, 403, grpc.StatusCode.PERMISSION_DENIED),
    # admin passes: the registration itself then fails (no such object)
    ("admin", 200, 400, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_shared_memory_registration_needs_admin(keyed: Served, scope: str, status: int,
                                                register: int,
                                                grpc_register: grpc.StatusCode) -> None:
    headers = _auth(scope)
    assert httpx.get(f"{keyed.http}/v2/systemsharedmemory/status",
                     headers=headers).status_code == status
    for path in ("region/r/register", "unregister"):
        answer = httpx.post(f"{keyed.http}/v2/systemsharedmemory/{path}", headers=headers,
                            json={"key": "/surge_keys_test_none", "byte_size": 8})
        assert answer.status_code == (register if path.endswith("/register")
                                      else 200 if scope == "admin" else 403), answer.text
    with grpc.insecure_channel(keyed.grpc) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="r", key="/surge_keys_test_none",
                                                 byte_size=8),
            metadata=(("authorization", f"Bearer {KEYS[scope]}"),), timeout=30)
    assert refused.value.code() == grpc_register


def test_metrics_can_be_left_open(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", with_slow=False)
    served = launch(repo, tmp_path / "server.log", "--api-key", "k", "--no-metrics-auth")
    try:
        assert httpx.get(served.metrics).status_code == 200
        assert httpx.get(f"{served.http}/v2/models/tiny").status_code == 401
    finally:
        assert served.stop() == 0, served.output()


def test_bad_key_file_is_one_clear_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("k1 read\nk2 superuser\n")
    code, out, err = run_cli(["serve", str(tmp_path), "--api-keys-file", str(key_file)], capsys)
    assert code == 2
    assert "unknown API key scope 'superuser'" in out + err


def _answers(served: Served, key: str, tries: int = 8) -> set[int]:
    """The statuses of `tries` inference requests, each on a new connection (so that
    several front ends answer them)."""
    return {httpx.post(f"{served.http}/v2/models/tiny/infer", json=TINY,
                       headers={"Authorization": f"Bearer {key}"}).status_code
            for _ in range(tries)}


def _until(condition: Callable[[], bool], served: Served, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, served.output()
        time.sleep(0.2)


def test_key_file_reloaded_by_every_front_end_on_sighup_and_refusals_logged(
        tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", with_slow=False)
    key_file, access = tmp_path / "keys", tmp_path / "access.log"
    key_file.write_text("client-2 infer\n")
    served = launch(repo, tmp_path / "server.log", "--api-keys-file", str(key_file),
                    "--frontends", "2", "--access-log", str(access))
    try:
        assert _answers(served, "client-2") == {200}
        assert _answers(served, "client-9", tries=1) == {401}
        # The same size and modification time: only SIGHUP makes the server read it again.
        stamp = key_file.stat()
        key_file.write_text("client-9 infer\n")
        os.utime(key_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        served.process.send_signal(signal.SIGHUP)  # to the supervisor: it tells each front end
        _until(lambda: served.output().count("API keys reloaded") == 2, served)
        assert _answers(served, "client-9") == {200}
        assert _answers(served, "client-2") == {401}
        # A broken file is seen by its change and leaves the keys in use.
        key_file.write_text("client-9 superuser\n")
        _until(lambda: "API keys not reloaded" in served.output(), served)
        assert _answers(served, "client-9") == {200}
        assert served.process.poll() is None
    finally:
        assert served.stop() == 0, served.output()
    refusals = [json.loads(line) for line in access.read_text().splitlines()
                if '"request"' in line]
    assert {(r["protocol"], r["request"], r["status"]) for r in refusals} == {
        ("http", "POST /v2/models/tiny/infer", 401)}
    assert len(refusals) == 1 + 8  # client-9 before the reload, client-2 after it


def test_sighup_without_files_to_reload_leaves_the_server_serving(tmp_path: Path) -> None:
    served = launch(make_repository(tmp_path / "repo", with_slow=False), tmp_path / "server.log")
    try:
        served.process.send_signal(signal.SIGHUP)
        _until(lambda: "SIGHUP: nothing to reload" in served.output(), served)
        assert httpx.post(f"{served.http}/v2/models/tiny/infer", json=TINY).status_code == 200
    finally:
        assert served.stop() == 0, served.output()


def test_grpc_refusals_are_in_the_access_log(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", with_slow=False)
    key_file, access = tmp_path / "keys", tmp_path / "access.log"
    key_file.write_text("reader read\n")
    served = launch(repo, tmp_path / "server.log", "--api-keys-file", str(key_file),
                    "--access-log", str(access))
    try:
        with grpc.insecure_channel(served.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for metadata in ((), (("authorization", "Bearer reader"),)):
                with pytest.raises(grpc.RpcError):
                    stub.ModelInfer(pb.ModelInferRequest(model_name="tiny"), metadata=metadata)
    finally:
        assert served.stop() == 0, served.output()
    refusals = [json.loads(line) for line in access.read_text().splitlines()]
    assert [(r["protocol"], r["request"], r["status"]) for r in refusals] == [
        ("grpc", "ModelInfer", "UNAUTHENTICATED"), ("grpc", "ModelInfer", "PERMISSION_DENIED")]

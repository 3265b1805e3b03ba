"""TLS on every port: tritonclient over HTTPS and gRPC with TLS, client certificates, a
certificate replaced while serving, and clear errors for a key that is not the certificate's."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.production.certs import issue, make_ca, stray_key
from tests.integration.production.conftest import Pki, Served, launch, serve_command
from tests.integration.server.conftest import triton_client
from tests.integration.server.models import make_repository

HERE = Path(__file__).resolve().parent
KEY = "tls-test-key"
TINY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"), with_slow=False)


@pytest.fixture(scope="module")
def tls_server(repo: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # Copies: the reload test replaces them.
    live = tmp_path_factory.mktemp("live")
    cert, key = shutil.copy(pki.server.cert, live / "cert.pem"), shutil.copy(pki.server.key,
                                                                               live / "key.pem")
    served = launch(repo, tmp_path_factory.mktemp("log") / "server.log", "--tls-cert", cert,
                    "--tls-key", key, "--api-key", KEY, ca=pki.ca.cert)
    yield served
    assert served.stop() == 0, served.output()


def _peer_certificate(address: str, ca: Path, alpn: str | None = None) -> bytes:
    """The DER certificate a new TLS handshake with `host:port` gets."""
    host, port = address.removeprefix("https://").split("/")[0].rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols([alpn])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def test_https_answers_and_plain_http_is_refused(tls_server: Served) -> None:
    with tls_server.client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        answer = client.post("/v2/models/tiny/infer", json=TINY)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_server.http.replace("https://", "http://") + "/v2/health/live", timeout=5)


def test_tritonclient_over_https_and_grpc_tls(tls_server: Served, pki: Pki) -> None:
    result = triton_client(str(HERE / "clients" / "triton_tls.py"),
                           tls_server.http.removeprefix("https://"), tls_server.grpc,
                           str(pki.ca.cert), KEY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


def test_metrics_port_speaks_tls_and_wants_the_key(tls_server: Served) -> None:
    assert httpx.get(tls_server.metrics, verify=tls_server.verify).status_code == 401
    answer = httpx.get(tls_server.metrics, verify=tls_server.verify,
                       headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200
    assert "surge_requests_total" in answer.text


def test_certificate_is_replaced_without_restart(tls_server: Served, pki: Pki,
                                                 tmp_path: Path) -> None:
    cert, key = (Path(a) for a in _served_files(tls_server))
    before_http = _peer_certificate(tls_server.http, pki.ca.cert)
    before_grpc = _peer_certificate(tls_server.grpc, pki.ca.cert, alpn="h2")
    assert before_http == before_grpc
    ca_key = _ca_key(pki)
    fresh = issue(tmp_path, pki.ca, ca_key, "server renewed")
    shutil.copy(fresh.key, key)
    shutil.copy(fresh.cert, cert)
    tls_server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while _peer_certificate(tls_server.http, pki.ca.cert) == before_http:
        assert time.monotonic() < deadline, tls_server.output()
        time.sleep(0.2)
    after = _peer_certificate(tls_server.http, pki.ca.cert)
    assert _peer_certificate(tls_server.grpc, pki.ca.cert, alpn="h2") == after
    assert "TLS certificate reloaded" in tls_server.output()
    # A broken replacement leaves the certificate in use and the server answering.
    cert.write_text("not a certificate")
    tls_server.process.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert _peer_certificate(tls_server.http, pki.ca.cert) == after
    assert "TLS certificate not reloaded" in tls_server.output()
    shutil.copy(fresh.cert, cert)


def _served_files(served: Served) -> tuple[str, str]:
    command = Path(f"/proc/{served.process.pid}/cmdline").read_bytes().split(b"\0")
    args = [a.decode() for a in command]
    return args[args.index("--tls-cert") + 1], args[args.index("--tls-key") + 1]


def _ca_key(pki: Pki):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pki.ca.key.read_bytes(), None)


def test_client_certificates_are_required_with_a_ca(repo: Path, pki: Pki, tmp_path: Path) -> None:
    served = launch(repo, tmp_path / "server.log", "--tls-cert", str(pki.server.cert),
                    "--tls-key", str(pki.server.key), "--tls-ca", str(pki.ca.cert),
                    ca=pki.ca.cert, client_cert=pki.client)
    try:
        assert httpx.get(f"{served.http}/v2/health/live", verify=served.verify).status_code == 200
        anonymous = ssl.create_default_context(cafile=str(pki.ca.cert))
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{served.http}/v2/health/live", verify=anonymous)
        # a client certificate from another CA is refused too
        other_ca, other_key = make_ca(tmp_path / "other", "Other CA")
        stranger = issue(tmp_path / "other", other_ca, other_key, "stranger", client=True)
        foreign = ssl.create_default_context(cafile=str(pki.ca.cert))
        foreign.load_cert_chain(str(stranger.cert), str(stranger.key))
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{served.http}/v2/health/live", verify=foreign)
    finally:
        assert served.stop() == 0, served.output()


@pytest.mark.parametrize("problem", ["mismatch", "missing", "garbage"])
def test_bad_key_pair_is_one_clear_line(repo: Path, pki: Pki, tmp_path: Path,
                                        problem: str) -> None:
    key = {"mismatch": stray_key(tmp_path), "missing": tmp_path / "nope.key",
           "garbage": tmp_path / "garbage.key"}[problem]
    if problem == "garbage":
        key.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    result = subprocess.run(serve_command(repo, "--tls-cert", str(pki.server.cert),
                                          "--tls-key", str(key)),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    message = (result.stdout + result.stderr).strip()
    assert len(message.splitlines()) == 1, message
    expected = {"mismatch": "is not the key of --tls-cert", "missing": "not found",
                "garbage": "not a PEM certificate and key"}[problem]
    assert expected in message, message


def test_cert_without_key_is_refused(repo: Path, pki: Pki) -> None:
    result = subprocess.run(serve_command(repo, "--tls-cert", str(pki.server.cert)),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stdout + result.stderr



def test_a_stalled_tls_handshake_is_cut_at_the_header_timeout(repo: Path, pki: Pki,
                                                              tmp_path: Path) -> None:
    """A client that connects and never sends its ClientHello is closed at --header-timeout on
    every port, as a plain-text client that sends no request head is (asyncio's own handshake
    deadline, 60 s, held the descriptor before)."""
    served = launch(repo, tmp_path / "server.log", "--tls-cert", str(pki.server.cert),
                    "--tls-key", str(pki.server.key), "--header-timeout", "1",
                    ca=pki.ca.cert)
    try:
        with contextlib.ExitStack() as stack:
            silent = []
            for address in (served.http, served.grpc, served.metrics):
                host, port = address.removeprefix("https://").split("/")[0].rsplit(":", 1)
                silent.append(stack.enter_context(
                    socket.create_connection((host, int(port)), timeout=30)))
            started = time.monotonic()
            for connection in silent:
                assert connection.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 10, "a silent TLS connection was held too long"
        assert httpx.get(f"{served.http}/v2/health/live", verify=served.verify).status_code == 200
    finally:
        assert served.stop() == 0, served.output()

"""Certificate reloads without a server: handshakes in memory against `Certificates`' contexts
(the ones the listeners hold), after the files were replaced by a new client CA or a FIFO."""

from __future__ import annotations

import os
import shutil
import ssl
import threading
from pathlib import Path

import pytest

from surge.server.tls import Certificates, TlsConfig
from tests.integration.production.certs import Pair, issue, make_ca


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """Whether a TLS handshake between the two contexts succeeds (both ends in memory)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end, outgoing, peer_in in (("client", tls_client, c_out, s_in),
                                             ("server", tls_server, s_out, c_in)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return False
            peer_in.write(outgoing.read())
        if all(done.values()):
            # TLS 1.3: the server judges the client's certificate after the client is done.
            try:
                tls_client.read(1)
            except ssl.SSLWantReadError:
                return True
            except ssl.SSLError:
                return False
    return False


def _client(ca: Pair, cert: Pair) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Pair]:
    ca, ca_key = make_ca(tmp_path / "one")
    other, other_key = make_ca(tmp_path / "two", "Other CA")
    live = tmp_path / "live"
    live.mkdir()
    server = issue(tmp_path / "one", ca, ca_key, "server")
    for source, name in ((server.cert, "cert.pem"), (server.key, "key.pem"), (ca.cert, "ca.pem")):
        shutil.copy(source, live / name)
    return {"ca": ca, "other": other, "live": Pair(live / "cert.pem", live / "key.pem"),
            "client": issue(tmp_path / "one", ca, ca_key, "client", client=True),
            "stranger": issue(tmp_path / "two", other, other_key, "stranger", client=True)}


def test_a_new_client_ca_is_what_every_listener_accepts(pki: dict[str, Pair]) -> None:
    live = pki["live"]
    certificates = Certificates(TlsConfig(live.cert, live.key, live.cert.with_name("ca.pem")))
    known, stranger = _client(pki["ca"], pki["client"]), _client(pki["ca"], pki["stranger"])
    for context in (certificates.context, certificates.grpc_context):
        assert _handshake(context, known)
        assert not _handshake(context, stranger)
    shutil.copy(pki["other"].cert, live.cert.with_name("ca.pem"))
    assert certificates.reload()
    # Before, the log said "reloaded" while the listeners kept the old CA.
    for context in (certificates.context, certificates.grpc_context):
        assert _handshake(context, stranger)
        assert not _handshake(context, known)


def test_a_failed_reload_leaves_every_listener_as_it_was(pki: dict[str, Pair]) -> None:
    live = pki["live"]
    certificates = Certificates(TlsConfig(live.cert, live.key))
    client = ssl.create_default_context(cafile=str(pki["ca"].cert))
    live.key.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    assert not certificates.reload()
    assert certificates.generation == 1
    for context in (certificates.context, certificates.grpc_context):
        assert _handshake(context, client)


def test_a_fifo_in_place_of_the_key_is_refused_without_blocking(pki: dict[str, Pair]) -> None:
    live = pki["live"]
    certificates = Certificates(TlsConfig(live.cert, live.key))
    live.key.unlink()
    os.mkfifo(live.key)
    outcome: list[bool] = []
    reload = threading.Thread(target=lambda: outcome.append(certificates.reload()), daemon=True)
    reload.start()
    reload.join(5.0)
    if reload.is_alive():  # the old code blocks opening the FIFO: let it go before failing
        os.close(os.open(live.key, os.O_WRONLY | os.O_NONBLOCK))
        reload.join(5.0)
    assert outcome == [False], "reading the FIFO blocked the reload (the event loop, served)"
    client = ssl.create_default_context(cafile=str(pki["ca"].cert))
    assert _handshake(certificates.context, client)

"""The HTTP/1.1 transport at the byte level: requests a client library would not send (HTTP/1.0,
pipelining with a malformed request, protocol upgrades, transfer codings, HEAD) get
answers a client can read, in order, and the connection serves on where the RFC allows."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from tests.integration.server.conftest import API_KEY, ServerProcess

from surge.server.limits import HTTP2_REFUSED, MAX_HEADER_FIELDS, MAX_PIPELINED

AUTH = b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
BODY = json.dumps({"inputs": [
    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
    {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
]}).encode()
H2C = (b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n")


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> dict:
        return dict(json.loads(self.body))


def _infer(version: bytes = b"1.1", extra: bytes = b"", body: bytes = BODY) -> bytes:
    return (b"POST /v2/models/tiny/infer HTTP/" + version + b"\r\nHost: t\r\n" + AUTH + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def _request(method: bytes, path: bytes) -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: t\r\n" + AUTH + b"\r\n"


class _Reader:
    """Responses read off a socket one by one, framed by Content-Length or chunked."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        self.closed = self.closed or not chunk
        return bool(chunk)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            assert self._fill(), f"connection closed before {marker!r}: {self.buffer!r}"
        line, self.buffer = self.buffer.split(marker, 1)
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            assert self._fill(), f"connection closed within a body: {self.buffer!r}"
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def response(self, head_only: bool = False) -> Response:
        lines = self._until(b"\r\n\r\n").split(b"\r\n")
        fields = (line.split(b": ", 1) for line in lines[1:])
        headers = {name.lower(): value for name, value in fields}
        status = int(lines[0].split()[1])
        if head_only or status < 200:
            return Response(status, headers, b"")
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while size := int(self._until(b"\r\n"), 16):
                body += self._take(size)
                self._take(2)
            self._take(2)
            return Response(status, headers, body)
        return Response(status, headers, self._take(int(headers[b"content-length"])))

    def at_eof(self) -> bool:
        while not self.buffer and self._fill():
            pass
        return not self.buffer and self.closed


Connect = Callable[[bytes], _Reader]  # sends bytes on a new connection


@pytest.fixture
def connect(server: ServerProcess) -> Iterator[Connect]:
    port = int(server.http.rsplit(":", 1)[1])
    sockets: list[socket.socket] = []

    def opened(data: bytes) -> _Reader:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30.0)
        sockets.append(sock)
        sock.sendall(data)
        return _Reader(sock)

    yield opened
    for sock in sockets:
        sock.close()


def _outputs(response: Response) -> dict:
    assert response.status == 200, response.body
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def test_an_http_1_0_client_gets_a_body_it_can_read(connect: Connect) -> None:
    """HTTP/1.0 has no chunked framing (RFC 9112 6.1): the answer carries a Content-Length."""
    reader = connect(_infer(b"1.0"))
    response = reader.response()
    assert b"transfer-encoding" not in response.headers
    assert _outputs(response)["m"] == [2, 4, 6]
    assert reader.at_eof()


@pytest.mark.parametrize("malformed", [
    b"NOT AN HTTP REQUEST\r\n\r\n",
    b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_requests_before_a_malformed_one_are_answered_first(
        connect: Connect, malformed: bytes) -> None:
    reader = connect(_infer() + malformed + _infer())
    assert _outputs(reader.response())["m"] == [2, 4, 6]
    refused = reader.response()
    assert refused.status == 400
    assert refused.json()["error"].startswith("invalid HTTP request")
    assert reader.at_eof()  # where the next request starts is unknown: the connection closes


def test_a_request_asking_for_h2c_is_served_as_http_1_1(connect: Connect) -> None:
    """curl --http2 on http:// sends `Upgrade: h2c` with the request and its body."""
    chunked = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\n" + AUTH + H2C
               + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
    reader = connect(_infer(extra=H2C) + chunked + _request(b"GET", b"/v2/models/tiny"))
    assert _outputs(reader.response())["y"] == [2.0, 3.0, 4.0, 5.0]
    assert _outputs(reader.response())["y"] == [2.0, 3.0, 4.0, 5.0]
    assert reader.response().json()["name"] == "tiny"


def test_a_transfer_coding_other_than_chunked_is_refused(connect: Connect) -> None:
    reader = connect(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\n" + AUTH
                     + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n")
    response = reader.response()
    assert response.status == 400
    assert "unsupported Transfer-Encoding 'gzip, chunked'" in response.json()["error"]


@pytest.mark.parametrize("path", [b"/v2/health/ready", b"/v2/models/tiny", b"/v2"])
def test_head_is_answered_as_get_without_the_body(connect: Connect, path: bytes) -> None:
    reader = connect(_request(b"HEAD", path) + _request(b"GET", path))
    head = reader.response(head_only=True)
    get = reader.response()
    assert head.status == get.status == 200
    assert head.headers[b"content-length"] == b"%d" % len(get.body)


def test_an_expect_request_answered_before_its_body_closes_the_connection(
        connect: Connect) -> None:
    """Its client may never send the body: the next request on the connection would be read
    as that body, and wait unanswered until the body timeout."""
    reader = connect(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\n" + AUTH
                     + b"Expect: 100-continue\r\nContent-Length: 5000000\r\n\r\n")
    response = reader.response()
    assert response.status == 413
    assert response.headers[b"connection"] == b"close"
    assert reader.at_eof()


def test_an_expect_request_whose_body_is_asked_for_keeps_the_connection(
        connect: Connect) -> None:
    reader = connect(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\n" + AUTH
                     + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY))
    assert reader.response().status == 100
    reader.sock.sendall(BODY + _infer())
    assert _outputs(reader.response())["m"] == [2, 4, 6]
    assert _outputs(reader.response())["m"] == [2, 4, 6]


def test_hundreds_of_upgrade_requests_in_one_packet_are_all_answered(
        connect: Connect) -> None:
    upgrade = b"GET /v2/health/live HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
    for _ in range(12):  # 1500 in all, never more unanswered than the cap
        reader = connect(upgrade * (MAX_PIPELINED + 1))
        statuses = [reader.response().status for _ in range(MAX_PIPELINED + 1)]
        assert statuses == [200] * (MAX_PIPELINED + 1)


@pytest.mark.parametrize("request_bytes", [
    b"GET /v2/health/live HTTP/1.1\r\n\r\n",
    b"GET /v2/health/live HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
])
def test_pipelined_requests_past_the_cap_are_refused_after_the_others_are_answered(
        connect: Connect, request_bytes: bytes) -> None:
    """Thousands of requests in one read each held about 2 KiB until answered (30 MiB for a
    connection that sends 256 KiB of them and reads nothing): the ones past the cap get one
    503, and the connection closes, so that the client sends them again elsewhere."""
    reader = connect(request_bytes * 5000)
    statuses = [reader.response().status for _ in range(MAX_PIPELINED + 1)]
    assert statuses == [200] * (MAX_PIPELINED + 1)
    refused = reader.response()
    assert refused.status == 503
    assert f"more than {MAX_PIPELINED} pipelined requests" in refused.json()["error"]
    assert refused.headers[b"connection"] == b"close"
    assert reader.at_eof()


def test_http_2_with_prior_knowledge_is_told_where_to_go(connect: Connect) -> None:
    """It read "invalid HTTP request: Pause on PRI/Upgrade", llhttp's words."""
    reader = connect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    response = reader.response()
    assert response.status == 400
    assert response.json()["error"] == HTTP2_REFUSED
    assert reader.at_eof()


@pytest.mark.parametrize(("target", "path"), [
    (b"http://t:8000", "/"), (b"http://t:8000?x=1", "/"),
    (b"http://t:8000/v2/health/ready?x=1", None),
])
def test_an_absolute_form_target_is_read_as_its_path(
        connect: Connect, target: bytes, path: str | None) -> None:
    """RFC 9112 3.2.2; without a path it stands for `/` (it was a 400 reading
    "'NoneType' object has no attribute 'decode'")."""
    reader = connect(_request(b"GET", target) + _request(b"GET", b"/v2/health/live"))
    response = reader.response()
    if path is None:
        assert response.status == 200
    else:
        assert response.status == 404
        assert response.json()["error"] == f"no route for {path}"
    assert reader.response().status == 200  # the connection serves on


def test_a_request_with_too_many_header_fields_is_refused(connect: Connect) -> None:
    """Within the 64 KiB of a head, 20,000 `a:b` fields cost 2 MiB of objects, held for each
    pipelined request until answered (128 of them: 260 MiB for one connection)."""
    live = _request(b"GET", b"/v2/health/live")  # its Host and Authorization: 2 fields
    allowed = live.replace(b"Host: t\r\n", b"Host: t\r\n" + b"a:b\r\n" * (MAX_HEADER_FIELDS - 2))
    assert connect(allowed).response().status == 200
    reader = connect(allowed.replace(b"Host: t\r\n", b"Host: t\r\na:b\r\n"))
    refused = reader.response()
    assert refused.status == 400
    assert refused.json()["error"] == (
        f"invalid HTTP request: more than {MAX_HEADER_FIELDS} header fields in one request")
    assert reader.at_eof()

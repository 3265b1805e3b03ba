"""How long and how many client connections the front ends keep open.

Every open connection holds a file descriptor. Without limits, clients that connect and send
nothing (or trickle a request a byte at a time) exhaust the process's descriptors, and then the
HTTP, gRPC and metrics listeners all stop accepting. The HTTP and metrics listeners run uvicorn
with `GuardedHttpProtocol`; the gRPC listener (surge/server/grpc_h2.py) applies them itself, or,
with `--grpc-server grpcio`, gets them as channel arguments.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Share of the descriptor limit (RLIMIT_NOFILE) each listener may hold by default: the rest is
# left to the workers' pipes and shared memory and to the other listeners.
_CONNECTION_SHARE = 4
_MAX_DEFAULT_CONNECTIONS = 4096
# httptools sets no limit on a request's line and headers; a V2 request needs a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
# Header fields in one request (Apache's LimitRequestFields is 100): 64 KiB of `a:b` lines made
# 20,000 fields of about 100 bytes of Python objects each, 2 MiB per request held until answered.
MAX_HEADER_FIELDS = 256
# The answer to HTTP/2 with prior knowledge (`curl --http2-prior-knowledge`, a gRPC client given
# this port): grpc core shows "Trying to connect an http1.x server", curl the JSON.
HTTP2_REFUSED = ("HTTP/2 is not served on this port (the request starts 'PRI * HTTP/2.0'): "
                 "send HTTP/1.1 here, and gRPC to the gRPC port (--grpc-port)")
# Requests one connection may have read and not yet answered (pipelined). Each costs about 2 KiB
# (scope, headers, events) and one read of 256 KiB holds 14,000 minimal ones: uncapped, a few
# hundred connections that pipeline without reading their answers held gigabytes.
MAX_PIPELINED = 128


def default_max_connections() -> int:
    """Connections per listener when none is configured: a quarter of the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAX_DEFAULT_CONNECTIONS
    return max(16, min(_MAX_DEFAULT_CONNECTIONS, soft // _CONNECTION_SHARE))


@dataclass(frozen=True)
class ConnectionLimits:
    """Timeouts and the connection cap every listener applies."""

    idle_timeout_s: float = 75.0  # a connection with no request in progress closes after this
    header_timeout_s: float = 10.0  # a request's line and headers (gRPC: the handshake; with
    # TLS, the TLS handshake too) must arrive within this of the connection or the request starting
    body_timeout_s: float = 60.0  # longest pause while a request body arrives
    max_connections: int = field(default_factory=default_max_connections)  # per listener; a
    # connection beyond it is closed as soon as it is accepted (gRPC: refused)
    max_streams: int = 256  # concurrent gRPC calls on one connection

    def __post_init__(self) -> None:
        for name in ("idle_timeout_s", "header_timeout_s", "body_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_connections < 1 or self.max_streams < 1:
            raise ValueError("max_connections and max_streams must be at least 1")

    def grpc_options(self) -> list[tuple[str, int]]:
        """The same limits as grpc.aio server options (channel arguments, `--grpc-server
        grpcio`)."""
        return [
            ("grpc.max_connection_idle_ms", _ms(self.idle_timeout_s)),
            ("grpc.server_handshake_timeout_ms", _ms(self.header_timeout_s)),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", self.max_streams),
        ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a body read timeout and a cap.

    uvicorn arms its keep-alive timer only after a response: a connection that never sends a
    complete request, or stops in the middle of one, stays open forever. Here a timer runs from
    the moment a connection opens or a request starts until its last byte arrives; uvicorn's
    keep-alive timer (`idle_timeout_s`) covers the time between requests.
    """

    limits: ConnectionLimits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_fields = 0
        self._unanswered: list[Any] = []  # request cycles read and not yet answered
        self._refusal: bytes | None = None  # the 400 for bytes that are no request, once read
        self._replaying = False  # parsing the head that stands for an ignored upgrade's
        self._overflow = False  # more requests pipelined than MAX_PIPELINED: the rest ignored

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            transport.abort()  # frees the descriptor now; uvicorn never sees the connection
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self in self.connections:
            super().connection_lost(exc)
        # uvicorn marks only the newest request disconnected; pipelined ones read before it
        # would write their answers to the closed transport (uvloop raises there).
        for cycle in self._unanswered:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._unanswered.clear()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, but bytes after a malformed request are dropped, and a request asking to
        switch protocols is served as HTTP/1.1 (a loop, not a recursion: a packet may hold
        hundreds of them)."""
        while data and self._refusal is None:  # after a refusal: what follows has no known start
            data = self._feed(data)

    def _feed(self, data: bytes) -> bytes:
        """Parse `data`; the bytes after the head of a request with `Upgrade`, still to parse."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._ignore_upgrade()
            return data[upgrade.args[0]:]
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        return b""

    def _ignore_upgrade(self) -> None:
        """Serve a request with `Upgrade` (curl --http2 sends `Upgrade: h2c`, a body included)
        as if it had none, which RFC 9110 7.8 allows. llhttp ends such a request at its head,
        taking the bytes after it for the new protocol's: a new parser reads them, first as the
        request's body (fed a head declaring the same body) when it has one."""
        if self._overflow:
            return  # refused: no request of it reaches the app
        self.parser = httptools.HttpRequestParser(self)
        framing = [b"%s: %s\r\n" % (name, value) for name, value in self.headers
                   if name in (b"content-length", b"transfer-encoding")]
        if framing and self.cycle is not None and not self.cycle.response_complete:
            self.cycle.more_body = True  # llhttp said complete; the app has not read it yet
            self._replaying = True
            try:
                self.parser.feed_data(b"POST / HTTP/1.1\r\n%s\r\n" % b"".join(framing))
            finally:
                self._replaying = False
            self._arm(self.limits.body_timeout_s)  # llhttp's early "complete" disarmed it

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not an HTTP request, as JSON naming why (it sent
        plain text, "Invalid HTTP request received."); called while the parser's error is
        being handled, whose cause is the reason (a head over MAX_HEAD_BYTES: ours). Requests
        read before them on the connection (pipelined) are answered first, in order: written
        now, the 400 would read as the answer to the first of them."""
        if self._overflow:
            return  # the bytes after the refused request are not read: the 503 stands
        error = sys.exc_info()[1]
        cause = error.__context__ or error if error is not None else None
        reason = f"invalid HTTP request: {cause}" if cause is not None else msg
        if self.parser.get_method() == b"PRI":  # llhttp: "Pause on PRI/Upgrade"
            reason = HTTP2_REFUSED
        self._refusal = _closing_answer(b"400 Bad Request", reason)
        if self.cycle is not None and self.cycle.more_body:
            self._drop(self.cycle)  # its body is malformed: the 400 answers it
        if self._answering_earlier():
            self._disarm()  # the malformed request's deadline: it is over
        else:
            self._refuse()

    def _drop(self, cycle: Any) -> None:
        """Forget a request: never started when queued behind others, and not waited for."""
        for item in [item for item in self.pipeline if item[0] is cycle]:
            self.pipeline.remove(item)
        self._unanswered = [c for c in self._unanswered if c is not cycle]

    def _answering_earlier(self) -> bool:
        """Whether complete requests read before the malformed bytes await their answers."""
        return any(not cycle.response_complete for cycle in self._unanswered)

    def _refuse(self) -> None:
        if self._refusal is not None and not self.transport.is_closing():
            self.transport.write(self._refusal)
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None and not self._answering_earlier():
            self._refuse()

    def on_message_begin(self) -> None:
        if self._replaying or self._overflow:
            return  # the request it stands for has begun; or one after the refused one
        super().on_message_begin()
        self._head_bytes = 0
        self._head_fields = 0
        self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        if self._replaying or self._overflow:
            return
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._replaying or self._overflow:
            return
        self._count_head(len(name) + len(value))
        self._head_fields += 1
        if self._head_fields > MAX_HEADER_FIELDS:
            raise ValueError(f"more than {MAX_HEADER_FIELDS} header fields in one request")
        if name.lower() == b"transfer-encoding" and value.strip().lower() != b"chunked":
            # llhttp takes a body ending in chunked as chunked and ignores the codings before
            # it: a gzip body would reach the app still compressed, read as JSON.
            raise ValueError(f"unsupported Transfer-Encoding {value.decode('latin-1')!r}: "
                             "send the body as is, with Content-Length or chunked")
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            # Raised inside a parser callback: uvicorn answers 400 and closes the connection.
            raise ValueError(f"request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        if self._replaying:
            return
        if self._overflow or len(self.pipeline) >= MAX_PIPELINED:
            self._refuse_overflow()
            return
        if self.url[:1] != b"/":  # absolute-form (or `*`): rare, so parsed twice
            self.url = _with_path(self.url)
        super().on_headers_complete()
        self._unanswered = [c for c in self._unanswered if not c.response_complete]
        if self.cycle is not None:
            self._unanswered.append(self.cycle)
            if self.cycle.waiting_for_100_continue:
                _close_unless_continued(self.cycle)
        self._arm(self.limits.body_timeout_s)

    def _refuse_overflow(self) -> None:
        """Answer the request after the first MAX_PIPELINED unanswered ones with a 503, once
        they are answered, and close: a client retries the requests it sent after it on another
        connection (RFC 9112 9.3.2), and their bytes, already read, are dropped unparsed."""
        if not self._overflow:
            self._overflow = True
            self._refusal = _closing_answer(
                b"503 Service Unavailable",
                f"more than {MAX_PIPELINED} pipelined requests await their answers on this "
                "connection: wait for answers before sending more, or open another connection")
        self._disarm()

    def on_body(self, body: bytes) -> None:
        if self._overflow:
            return  # a refused request's body: not the body of the last request accepted
        super().on_body(body)
        self._arm(self.limits.body_timeout_s)

    def on_message_complete(self) -> None:
        if self._overflow:
            return
        super().on_message_complete()
        self._disarm()  # the app answers; then uvicorn's keep-alive timer takes over

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()  # the app, if it is reading the body, sees a disconnect


def _with_path(url: bytes) -> bytes:
    """An absolute-form target without a path (`http://host:8000`, `http://host?x=1`) as the
    origin form of `/` (RFC 9112 3.2.2): uvicorn read its path as None and refused it with
    "'NoneType' object has no attribute 'decode'". Other targets are kept as they are."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return url  # uvicorn's own parse refuses it
    if parsed.path is not None:
        return url
    return b"/?" + parsed.query if parsed.query else b"/"


def _closing_answer(status: bytes, reason: str) -> bytes:
    """A JSON error answer written straight to the transport, closing the connection."""
    body = orjson.dumps({"error": reason[:300]})
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, len(body), body))


def _close_unless_continued(cycle: Any) -> None:
    """Close the connection after the answer to a request with `Expect: 100-continue` that is
    answered before its body was asked for (a 413, a 401): its client may never send the body,
    and kept open, the connection would read its next request as that body (RFC 9110 10.1.1:
    the server says whether it closes)."""
    send = cycle.send

    async def answer(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and cycle.waiting_for_100_continue:
            cycle.keep_alive = False  # uvicorn adds `Connection: close` and closes after it
        await send(message)

    cycle.send = answer


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """A GuardedHttpProtocol class bound to `limits` (uvicorn instantiates it per connection)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})

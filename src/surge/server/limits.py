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

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Share of the descriptor limit (RLIMIT_NOFILE) each listener may hold by default: the rest is
# left to the workers' pipes and shared memory and to the other listeners.
_CONNECTION_SHARE = 4
_MAX_DEFAULT_CONNECTIONS = 4096
# httptools sets no limit on a request's line and headers; a V2 request needs a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024


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
        self._unanswered: list[Any] = []  # request cycles read and not yet answered

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

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not an HTTP request, as JSON naming why (it sent
        plain text, "Invalid HTTP request received."); called while the parser's error is
        being handled, whose cause is the reason (a head over MAX_HEAD_BYTES: ours)."""
        error = sys.exc_info()[1]
        cause = error.__context__ or error if error is not None else None
        reason = f"invalid HTTP request: {cause}" if cause is not None else msg
        body = orjson.dumps({"error": reason[:300]})
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (len(body), body))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            # Raised inside a parser callback: uvicorn answers 400 and closes the connection.
            raise ValueError(f"request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._unanswered = [c for c in self._unanswered if not c.response_complete]
        if self.cycle is not None:
            self._unanswered.append(self.cycle)
        self._arm(self.limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(self.limits.body_timeout_s)

    def on_message_complete(self) -> None:
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


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """A GuardedHttpProtocol class bound to `limits` (uvicorn instantiates it per connection)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})

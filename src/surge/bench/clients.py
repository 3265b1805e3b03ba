"""Light clients for the load generator: raw HTTP/1.1 keep-alive and raw-bytes gRPC.

The load generator shares the cores with the server it measures, so each request costs the
client as little as possible: payloads are serialized once, HTTP responses are parsed by
httptools without building header dicts, and gRPC responses are not deserialized.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import httptools


class Transport(Protocol):
    """Sends one prepared request; returns an outcome kind ('ok', '503', 'connect', ...)."""

    async def send(self, payload: bytes) -> str: ...

    async def close(self) -> None: ...


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(ConnectionError("bad HTTP response"))

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("connection closed"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, payload: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


class HttpTransport:
    """A pool of keep-alive connections; each send borrows one (opening it if none is idle)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[_HttpConnection] = []
        self._all: list[_HttpConnection] = []

    async def _connection(self) -> _HttpConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_HttpConnection, self.host, self.port)
        self._all.append(conn)
        return conn

    async def send(self, payload: bytes) -> str:
        try:
            conn = await self._connection()
        except OSError:
            return "connect"
        try:
            status = await conn.request(payload)
        except (OSError, ConnectionError):
            return "connection"
        except asyncio.CancelledError:
            if conn.transport is not None:
                conn.transport.close()  # its answer would arrive on the next request
            raise
        self._idle.append(conn)
        return "ok" if status == 200 else str(status)

    async def close(self) -> None:
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()


class GrpcTransport:
    """ModelInfer with pre-serialized request bytes over one channel per `channels`."""

    METHOD = "/inference.GRPCInferenceService/ModelInfer"

    def __init__(self, target: str, channels: int = 1,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        import grpc

        self._grpc = grpc
        options = [("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.max_send_message_length", 64 << 20)]
        self._channels = [grpc.aio.insecure_channel(target, options=options)
                          for _ in range(channels)]
        self._calls = [ch.unary_unary(self.METHOD) for ch in self._channels]
        self._next = 0
        self._metadata = metadata or None

    async def send(self, payload: bytes) -> str:
        call: Any = self._calls[self._next]
        self._next = (self._next + 1) % len(self._calls)
        try:
            await call(payload, metadata=self._metadata)
        except self._grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "ok"

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

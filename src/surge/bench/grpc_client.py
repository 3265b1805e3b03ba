"""The load generator's gRPC client: unary calls of pre-serialized requests over HTTP/2
connections of its own, answers not deserialized.

grpc.aio's client runs grpc core's threads beside the event loop and costs the load generator
several times what its HTTP client does per request, on the cores the measured server needs.
This one writes each call as a HEADERS frame (a header block encoded once) and DATA frames, reads
only the status trailers, and coalesces the frames of one turn of the event loop into one write.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

import grpc
import hpack

from surge.protocol.http2 import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_FRAME_SIZE,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    CoalescedWrites,
    Http2Error,
    data_frames,
    encode_headers,
    frame,
    frame_content,
    read_frames,
)

RECEIVE_WINDOW = 16 * 1024 * 1024
MAX_FRAME = (1 << 24) - 1  # the largest frame we accept: the most SETTINGS may allow
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass
class _Call:
    waiter: asyncio.Future[str]
    send_window: int
    pending: bytes  # the message's bytes the server's windows do not yet allow
    unacked: int = 0  # answer bytes received, not yet credited back to the stream


class GrpcConnection(CoalescedWrites):
    """One HTTP/2 connection carrying any number of concurrent unary calls."""

    def __init__(self, header_block: bytes) -> None:
        super().__init__()
        self.header_block = header_block
        self.buffer = bytearray()
        self.decoder = hpack.Decoder()
        self.calls: dict[int, _Call] = {}
        self.next_stream = 1
        self.send_window = DEFAULT_WINDOW
        self.initial_send_window = DEFAULT_WINDOW
        self.max_send_frame = DEFAULT_FRAME
        self.unacked = 0
        self.block = bytearray()  # the header block being read (HEADERS, CONTINUATIONs)
        self.block_ends_stream = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._write(PREFACE + frame(SETTINGS, 0, 0, struct.pack(
            ">HIHIHI", ENABLE_PUSH, 0, INITIAL_WINDOW_SIZE, RECEIVE_WINDOW, MAX_FRAME_SIZE,
            MAX_FRAME)) + frame(WINDOW_UPDATE, 0, 0, struct.pack(
                ">I", RECEIVE_WINDOW - DEFAULT_WINDOW)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for call in self.calls.values():
            if not call.waiter.done():
                call.waiter.set_result("connection")
        self.calls.clear()

    async def call(self, message: bytes) -> str:
        """Send one call; its outcome: "ok" or the status code's name."""
        if self.closed:
            return "connection"
        stream_id, self.next_stream = self.next_stream, self.next_stream + 2
        call = _Call(asyncio.get_running_loop().create_future(), self.initial_send_window,
                     struct.pack(">BI", 0, len(message)) + message)
        self.calls[stream_id] = call
        self._write(frame(HEADERS, END_HEADERS, stream_id, self.header_block))
        self._send_data(stream_id, call)
        try:
            return await call.waiter
        except asyncio.CancelledError:
            if self.calls.pop(stream_id, None) is not None:
                self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", 8)))  # CANCEL
            raise

    def _send_data(self, stream_id: int, call: _Call) -> None:
        allowed = max(0, min(len(call.pending), self.send_window, call.send_window))
        data, call.pending = call.pending[:allowed], call.pending[allowed:]
        self.send_window -= allowed
        call.send_window -= allowed
        if data:
            self._write(data_frames(stream_id, data, self.max_send_frame,
                                    end_stream=not call.pending))

    # --- frames in -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            for kind, flags, stream_id, payload in read_frames(self.buffer, MAX_FRAME):
                self._frame(kind, flags, stream_id, payload)
        except (Http2Error, hpack.HPACKError, ValueError, struct.error):
            if self.transport is not None:
                self.transport.close()  # connection_lost fails the calls

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind in (HEADERS, CONTINUATION):
            self._headers(kind, flags, stream_id, payload)
        elif kind == DATA:
            self._data(stream_id, len(payload))
            if flags & END_STREAM:
                self._end(stream_id, "INTERNAL")  # an answer without its status trailers
        elif kind == RST_STREAM:
            code = struct.unpack(">I", payload)[0]
            self._end(stream_id, "UNAVAILABLE" if code == REFUSED_STREAM else "CANCELLED")
        elif kind == SETTINGS and not flags & ACK:
            self._settings(payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, struct.unpack(">I", payload)[0] & 0x7FFFFFFF)
        elif kind == PING and not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            self._goaway(struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF)

    def _headers(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == HEADERS:
            start, end = frame_content(flags, payload)
            if flags & PRIORITY_FLAG:
                start += 5
            self.block = bytearray(payload[start:end])
            self.block_ends_stream = bool(flags & END_STREAM)
        else:
            self.block += payload
        if not flags & END_HEADERS:
            return
        # Always decoded, whoever it is for: decoding keeps the table in step with the server's.
        headers = self.decoder.decode(bytes(self.block))
        if self.block_ends_stream:  # trailers (or a trailers-only answer): the status
            status = next((value for key, value in headers if key == "grpc-status"), "2")
            self._end(stream_id, _outcome(str(status)))

    def _data(self, stream_id: int, size: int) -> None:
        self.unacked += size
        if self.unacked >= RECEIVE_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        call = self.calls.get(stream_id)
        if call is not None:
            call.unacked += size
            if call.unacked >= RECEIVE_WINDOW // 2:
                self._write(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", call.unacked)))
                call.unacked = 0

    def _settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                for call in self.calls.values():
                    call.send_window += value - self.initial_send_window
                self.initial_send_window = value
            elif key == MAX_FRAME_SIZE:
                self.max_send_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            self.send_window += increment
        elif (call := self.calls.get(stream_id)) is not None:
            call.send_window += increment
        self._flush_pending()

    def _flush_pending(self) -> None:
        for stream_id, call in list(self.calls.items()):
            if call.pending and self.send_window > 0 and call.send_window > 0:
                self._send_data(stream_id, call)

    def _goaway(self, last_stream: int) -> None:
        self.closed = True  # no new calls here; those above `last_stream` were not processed
        for stream_id in [s for s in self.calls if s > last_stream]:
            self._end(stream_id, "UNAVAILABLE")

    def _end(self, stream_id: int, outcome: str) -> None:
        call = self.calls.pop(stream_id, None)
        if call is not None and not call.waiter.done():
            call.waiter.set_result(outcome)
        if self.closed and not self.calls and self.transport is not None:
            self.transport.close()


def _outcome(status: str) -> str:
    code = int(status) if status.isdigit() else 2  # UNKNOWN
    return "ok" if code == 0 else STATUS_NAMES.get(code, "UNKNOWN")


class LeanGrpcTransport:
    """ModelInfer calls spread over `connections` HTTP/2 connections, each opened on first use
    and again after the server closes it."""

    METHOD = b"/inference.GRPCInferenceService/ModelInfer"

    def __init__(self, host: str, port: int, connections: int = 1,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.host, self.port = host, port
        self.header_block = encode_headers([
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", self.METHOD),
            (b":authority", f"{host}:{port}".encode()), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), (b"user-agent", b"surge-bench"),
            *((key.encode(), value.encode()) for key, value in metadata)])
        self._connections: list[asyncio.Future[GrpcConnection] | None] = \
            [None] * max(1, connections)
        self._next = 0

    async def _connection(self, slot: int) -> GrpcConnection:
        """The slot's connection; one is opened when there is none, the last one failed to
        open or the server closed it (the calls waiting on it meanwhile share the opening)."""
        opened = self._connections[slot]
        if opened is None or (opened.done() and (opened.exception() is not None
                                                 or opened.result().closed)):
            opened = asyncio.ensure_future(self._open())
            self._connections[slot] = opened
        return await asyncio.shield(opened)

    async def _open(self) -> GrpcConnection:
        _, connection = await asyncio.get_running_loop().create_connection(
            lambda: GrpcConnection(self.header_block), self.host, self.port)
        return connection

    async def send(self, payload: bytes) -> str:
        slot, self._next = self._next, (self._next + 1) % len(self._connections)
        try:
            connection = await self._connection(slot)
        except OSError:
            return "connect"
        return await connection.call(payload)

    async def close(self) -> None:
        for opened in self._connections:
            if opened is None or not opened.done() or opened.exception() is not None:
                continue
            if opened.result().transport is not None:
                opened.result().transport.close()

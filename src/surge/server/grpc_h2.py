"""The V2 gRPC front end on an HTTP/2 protocol of Surge's own, on the server's event loop.

gRPC needs a small part of HTTP/2: a HEADERS frame (or a few CONTINUATIONs) and DATA frames in,
HEADERS + DATA + trailing HEADERS out, flow control, SETTINGS and PING. This module speaks
exactly that part as an asyncio protocol, decodes header blocks with `hpack`, and calls the
same `InferenceServicer` methods as the grpc.aio server, through a context that offers what
those methods use (metadata, peer, abort, trailing metadata): unary calls, and
ModelStreamInfer, whose requests reach the servicer as they arrive and whose answers go out as
they are made.

The frames of a request are parsed where they arrive, with no thread hop: grpc.aio runs its
HTTP/2 stack in grpc core's threads and hands each call to the event loop, which on a tiny model
costs several times the inference's own front-end work (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import hpack

from surge.protocol import http2 as h2
from surge.server.grpc_calls import (
    HARD_HEADER_LIST,
    MAX_HEADER_LIST,
    CallContext,
    CallError,
    CallHeaders,
    HeaderBlocks,
    Method,
    Stream,
    check_block_size,
    decompressed,
    oversized,
    parsed,
    request_message,
    status_trailers,
    take_messages,
)
from surge.server.grpc_flow import RECEIVE_WINDOW, ReceiveFlow
from surge.server.limits import ConnectionLimits

log = logging.getLogger(__name__)
CLOSED_ON_ERROR = "gRPC connection from %s closed: %s"  # bounded by surge/server/log_limits.py

RECEIVE_FRAME = 1024 * 1024  # the largest frame a client may send us
# A streaming call's answers not yet sent, past which its handler waits: a client that does
# not read them holds no more memory (nor, once STREAM_HELD waits, sends more requests).
STREAM_PENDING = 4 * 1024 * 1024

RESPONSE_HEADERS = h2.encode_headers([(b"content-type", b"application/grpc"),
                                   (b"grpc-accept-encoding", b"identity,deflate,gzip")],
                                  status_200=True)


class ServerState:
    """What every connection of one listener shares: the calls it serves and its limits."""

    def __init__(self, methods: dict[str, Method], limits: ConnectionLimits,
                 max_message_bytes: int) -> None:
        self.methods = methods
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self.connections: set[GrpcProtocol] = set()
        self.draining = False


class GrpcProtocol(h2.CoalescedWrites):
    """One client connection: HTTP/2 frames in, gRPC calls dispatched, answers framed out."""

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state
        self.buffer = bytearray()
        self.preface = False
        self.header_blocks = HeaderBlocks(HARD_HEADER_LIST)
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.header_block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments)
        self.send_window = h2.DEFAULT_WINDOW  # the client's connection window for our DATA
        self.initial_send_window = h2.DEFAULT_WINDOW
        self.max_send_frame = h2.DEFAULT_FRAME
        self.flow = ReceiveFlow(self._write, state.max_message_bytes)
        self.peer = ""
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""  # handshake, body or idle
        self.going_away = False  # a GOAWAY was sent: close once the open calls are answered
        self.drained: asyncio.Event | None = None
        self.by_type: dict[int, Callable[[int, int, bytes], None]] = {
            h2.DATA: self._data, h2.HEADERS: self._headers, h2.CONTINUATION: self._continuation,
            h2.SETTINGS: self._settings, h2.WINDOW_UPDATE: self._window_update, h2.PING: self._ping,
            h2.RST_STREAM: self._reset_by_client, h2.GOAWAY: self._goaway_from_client,
            h2.PUSH_PROMISE: self._push_promise}

    # --- connection ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # uvloop's are not asyncio.Transport
        self.transport = transport
        # Draining: accepted as the listener closed, after stop() listed the connections to
        # close; left open, it outlived the event loop.
        if self.state.draining or len(self.state.connections) >= self.state.limits.max_connections:
            transport.abort()
            return
        self.state.connections.add(self)
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple):
            family = "ipv6" if ":" in address[0] else "ipv4"
            self.peer = f"{family}:{address[0]}:{address[1]}"
        settings = struct.pack(">HIHIHIHI", h2.MAX_CONCURRENT_STREAMS, self.state.limits.max_streams,
                               h2.INITIAL_WINDOW_SIZE, RECEIVE_WINDOW, h2.MAX_FRAME_SIZE,
                               RECEIVE_FRAME, h2.MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST)
        window = struct.pack(">I", RECEIVE_WINDOW - h2.DEFAULT_WINDOW)
        transport.write(h2.frame(h2.SETTINGS, 0, 0, settings)
                        + h2.frame(h2.WINDOW_UPDATE, 0, 0, window))
        self._arm("handshake", self.state.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self._disarm()
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        if self.drained is not None:
            self.drained.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._parse()
            self._rearm()
        except h2.Http2Error as exc:
            self._connection_error(exc.code, str(exc))
        except hpack.OversizedHeaderListError:
            self._connection_error(h2.ENHANCE_YOUR_CALM,
                                   f"header list over {HARD_HEADER_LIST} bytes")
        except hpack.HPACKError as exc:
            self._connection_error(h2.COMPRESSION_ERROR, f"header block: {exc}")
        except (ValueError, IndexError, struct.error, UnicodeDecodeError) as exc:
            log.debug(CLOSED_ON_ERROR, self.peer, exc)
            self._goaway(h2.PROTOCOL_ERROR, "malformed frame")

    def _connection_error(self, code: int, reason: str) -> None:
        log.debug(CLOSED_ON_ERROR, self.peer, reason)
        self._goaway(code, reason)

    def _parse(self) -> None:
        buffer = self.buffer
        if not self.preface:
            if len(buffer) < len(h2.PREFACE):
                if not h2.PREFACE.startswith(bytes(buffer)):
                    raise h2.Http2Error(h2.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if buffer[:len(h2.PREFACE)] != h2.PREFACE:
                raise h2.Http2Error(h2.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            del buffer[:len(h2.PREFACE)]
            self.preface = True
        for kind, flags, stream_id, payload in h2.read_frames(buffer, RECEIVE_FRAME):
            if self.transport is None or self.transport.is_closing():
                break  # a GOAWAY went out: what follows it is not read
            self._frame(kind, flags, stream_id, payload)

    # --- frames ----------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.header_block is not None and kind != h2.CONTINUATION:
            raise h2.Http2Error(h2.PROTOCOL_ERROR, "header block interrupted")
        handler = self.by_type.get(kind)
        if handler is not None:  # PRIORITY and unknown types are ignored (RFC 9113 4.1, 5.3.2)
            handler(flags, stream_id, payload)

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) != 8:
            raise h2.Http2Error(h2.PROTOCOL_ERROR, "bad PING")
        if not flags & h2.ACK:
            self._write(h2.frame(h2.PING, h2.ACK, 0, payload))

    def _goaway_from_client(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._goaway(h2.NO_ERROR, "")  # the calls in progress finish, then the connection closes

    def _push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise h2.Http2Error(h2.PROTOCOL_ERROR, "a client may not push")

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise h2.Http2Error(h2.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = h2.frame_content(flags, payload)
        if flags & h2.PRIORITY_FLAG:
            start += 5
        if start > end:
            raise h2.Http2Error(h2.PROTOCOL_ERROR, "HEADERS priority exceeds the frame")
        check_block_size(end - start)
        self.header_block = (stream_id, flags, bytearray(payload[start:end]))
        if flags & h2.END_HEADERS:
            self._end_headers()

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.header_block is None or self.header_block[0] != stream_id:
            raise h2.Http2Error(h2.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self.header_block[2].extend(payload)
        check_block_size(len(self.header_block[2]))
        if flags & h2.END_HEADERS:
            self._end_headers()

    def _end_headers(self) -> None:
        assert self.header_block is not None
        stream_id, flags, block = self.header_block
        self.header_block = None
        call = self.header_blocks.decode(bytes(block))  # even for a stream refused: it updates
        # the table
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: only their size and END_STREAM matter
            if call.size > MAX_HEADER_LIST:
                self._refuse(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, oversized(call.size))
            elif flags & h2.END_STREAM:
                self._request_complete(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise h2.Http2Error(h2.PROTOCOL_ERROR, f"stream {stream_id} reused or even")
        self.last_stream = stream_id
        if self.state.draining or len(self.streams) >= self.state.limits.max_streams:
            self._write(h2.frame(h2.RST_STREAM, 0, stream_id, struct.pack(">I", h2.REFUSED_STREAM)))
            return
        stream = Stream(stream_id, call, (RECEIVE_WINDOW, self.initial_send_window))
        self.streams[stream_id] = stream
        refusal = self._refusal(call)
        if refusal is not None:
            self._refuse(stream, *refusal)
        elif self.state.methods[stream.path].streaming:  # answers go out while requests arrive
            stream.inbox = asyncio.Queue()
            stream.task = asyncio.get_running_loop().create_task(self._stream_call(stream))
            if flags & h2.END_STREAM:
                stream.inbox.put_nowait(None)
        elif flags & h2.END_STREAM:
            self._request_complete(stream)

    def _refusal(self, call: CallHeaders) -> tuple[grpc.StatusCode, str] | None:
        """Why a call is answered before it runs; None when it runs."""
        if call.size > MAX_HEADER_LIST:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, oversized(call.size)
        if call.problem:
            return grpc.StatusCode.INVALID_ARGUMENT, call.problem
        if call.path not in self.state.methods:
            return grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {call.path}"
        return None

    def _refuse(self, stream: Stream, code: grpc.StatusCode, details: str) -> None:
        """End a call now (a streaming client waits for the answer) and reset its stream:
        what the client still sends on it is dropped."""
        self._finish(stream, code, details)
        self._write(h2.frame(h2.RST_STREAM, 0, stream.id, struct.pack(">I", h2.NO_ERROR)))

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self.flow.received(len(payload))
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed or (stream.task is not None and stream.inbox is None):
            return  # a stream we reset or refused, or DATA after END_STREAM: dropped
        self.flow.stream_received(stream, len(payload))
        start, end = h2.frame_content(flags, payload)
        stream.body += payload[start:end]
        refusal = self.flow.arrived(stream, end - start)
        if refusal:
            self._refuse(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            return
        if stream.inbox is not None:
            self._deliver(stream, bool(flags & h2.END_STREAM))
        elif flags & h2.END_STREAM:
            self._request_complete(stream)

    def _deliver(self, stream: Stream, last: bool) -> None:
        """A streaming call's complete requests to its handler (None after the last)."""
        assert stream.inbox is not None
        try:
            for compressed, payload in take_messages(stream.body):  # held: still buffered
                stream.held += 5 + len(payload)
                stream.inbox.put_nowait((decompressed(compressed, payload, stream.encoding,
                                                      self.state.max_message_bytes),
                                         5 + len(payload)))
        except CallError as exc:
            self._finish(stream, exc.code, str(exc))
            return
        if last:
            stream.inbox.put_nowait(None)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) % 6:
            raise h2.Http2Error(h2.PROTOCOL_ERROR, "bad SETTINGS")
        if flags & h2.ACK:
            return
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == h2.INITIAL_WINDOW_SIZE:
                delta = value - self.initial_send_window
                self.initial_send_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == h2.MAX_FRAME_SIZE:
                if not h2.DEFAULT_FRAME <= value < 1 << 24:
                    raise h2.Http2Error(h2.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.max_send_frame = value
            # HEADER_TABLE_SIZE does not matter: nothing we send is indexed.
        self._write(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._flush_pending()

    def _window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise h2.Http2Error(h2.FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.send_window += increment
        self._flush_pending()

    def _reset_by_client(self, flags: int, stream_id: int, payload: bytes = b"") -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self.flow.release(stream)
            stream.closed = True
            if stream.task is not None:
                stream.task.cancel()  # as grpc.aio: the handler's await is cancelled

    # --- calls -----------------------------------------------------------------------------

    def _request_complete(self, stream: Stream) -> None:
        stream.task = asyncio.get_running_loop().create_task(self._call(stream))

    async def _call(self, stream: Stream) -> None:
        context = CallContext(stream.metadata, self.peer)

        async def unary() -> None:
            handler, request_class, _ = self.state.methods[stream.path]
            body = stream.body
            self.flow.release(stream)
            request = parsed(request_class, request_message(
                body, stream.encoding, self.state.max_message_bytes))
            self._send_message(stream, (await handler(request, context)).SerializeToString())

        await self._answer(stream, context, unary())

    async def _stream_call(self, stream: Stream) -> None:
        context = CallContext(stream.metadata, self.peer)

        async def streamed() -> None:
            handler, request_class, _ = self.state.methods[stream.path]
            async for answer in handler(self._requests(stream, request_class), context):
                self._send_message(stream, answer.SerializeToString())
                while len(stream.pending) > STREAM_PENDING:  # the client is not reading
                    stream.drained = asyncio.get_running_loop().create_future()
                    await stream.drained

        await self._answer(stream, context, streamed())

    async def _answer(self, stream: Stream, context: CallContext,
                      work: Coroutine[Any, Any, None]) -> None:
        """Run a call's work within its deadline; end the call with the status it comes to."""
        if stream.timeout is not None:
            context.deadline = asyncio.get_running_loop().time() + stream.timeout
        try:
            await (work if stream.timeout is None else asyncio.wait_for(work, stream.timeout))
        except grpc.aio.AbortError:
            self._finish(stream, context.code, context.details, context.trailing)
        except TimeoutError:
            self._finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except CallError as exc:
            self._finish(stream, exc.code, str(exc))
        except asyncio.CancelledError:
            self._finish(stream, grpc.StatusCode.CANCELLED, "Cancelled")
            raise
        except Exception:
            log.exception("unhandled error in %s", stream.path)
            self._finish(stream, grpc.StatusCode.INTERNAL, "Unexpected error")
        else:
            self._finish(stream, grpc.StatusCode.OK, "", context.trailing)

    async def _requests(self, stream: Stream, request_class: Any) -> AsyncIterator[Any]:
        """A streaming call's requests, parsed as its handler reads them."""
        assert stream.inbox is not None
        while (item := await stream.inbox.get()) is not None:
            message, wire = item
            self.flow.read_by_handler(stream, wire)
            yield parsed(request_class, message)

    def _send_message(self, stream: Stream, message: bytes) -> None:
        if stream.closed:
            return
        if not stream.headers_sent:
            self._write(h2.frame(h2.HEADERS, h2.END_HEADERS, stream.id, RESPONSE_HEADERS))
            stream.headers_sent = True
        stream.pending += struct.pack(">BI", 0, len(message))
        stream.pending += message
        self._send_data(stream)

    def _finish(self, stream: Stream, code: grpc.StatusCode, details: str,
                metadata: tuple[tuple[str, Any], ...] = ()) -> None:
        """End the call with its status, after the messages still waiting for the client's
        windows (trailers only when nothing was sent); then forget it."""
        if stream.closed or self.transport is None or self.transport.is_closing():
            return
        stream.closed = True
        stream.trailers = status_trailers(code, details, metadata)
        if stream.headers_sent:
            self._send_data(stream)
            return
        self._write(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, stream.id,
                          RESPONSE_HEADERS + stream.trailers))
        self._forget(stream)

    def _send_data(self, stream: Stream) -> None:
        """Send what the windows allow of the stream's messages; the trailers after the last
        once the call has ended."""
        data = stream.pending
        allowed = max(0, min(len(data), self.send_window, stream.send_window))
        frames = h2.data_frames(stream.id, memoryview(data)[:allowed], self.max_send_frame)
        self.send_window -= allowed
        stream.send_window -= allowed
        del data[:allowed]  # the view above is gone: data_frames copied what it framed
        drained = stream.drained
        if drained is not None and len(data) <= STREAM_PENDING and not drained.done():
            drained.set_result(None)  # a streaming handler waiting for the client goes on
        done = not stream.pending and bool(stream.trailers)
        if done:
            frames += h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, stream.id,
                               stream.trailers)
        self._write(frames)
        if done:
            self._forget(stream)

    def _flush_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending and self.send_window > 0 and stream.send_window > 0:
                self._send_data(stream)

    def _forget(self, stream: Stream) -> None:
        self.flow.release(stream)
        self.streams.pop(stream.id, None)
        if stream.task is not None and stream.task is not asyncio.current_task():
            stream.task.cancel()  # a streaming call refused mid-way stops reading
        self._rearm()

    def _rearm(self) -> None:
        """The connection's one timer: the body timeout while a request arrives, the idle
        timeout while no call is open, none while calls are being answered."""
        if not self.preface or self.transport is None or self.transport.is_closing():
            return  # before the preface, the handshake deadline set at connect stands
        limits = self.state.limits
        if any(stream.task is None for stream in self.streams.values()):
            self._arm("body", limits.body_timeout_s)
        elif self.streams:
            self._disarm()
        elif self.going_away or self.state.draining:
            self._goaway(h2.NO_ERROR, "")
            self._close()
        elif self.timer_kind != "idle":
            self._arm("idle", limits.idle_timeout_s)

    # --- plumbing --------------------------------------------------------------------------

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def _goaway(self, code: int, reason: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self.going_away:
            self._write(h2.frame(h2.GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code)
                              + reason.encode()[:256]))
        self.going_away = True
        if code == h2.NO_ERROR and self.streams:
            return  # the calls in progress finish; the last one closes the connection
        self._close()

    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self.timer_kind = kind
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_kind = ""

    def _expired(self) -> None:
        """A handshake, a request body or an idle spell took too long: the connection closes
        (calls being answered are cancelled with it)."""
        kind, self.timer, self.timer_kind = self.timer_kind, None, ""
        self._goaway(h2.ENHANCE_YOUR_CALM if kind == "body" else h2.NO_ERROR, f"{kind} timeout")
        self._close()

"""The V2 gRPC front end on an HTTP/2 protocol of Surge's own, on the server's event loop.

gRPC's unary calls need a small part of HTTP/2: one HEADERS frame (or a few CONTINUATIONs) and
DATA frames in, HEADERS + DATA + trailing HEADERS out, flow control, SETTINGS and PING. This
module speaks exactly that part as an asyncio protocol, decodes header blocks with `hpack`, and
calls the same `InferenceServicer` methods as the grpc.aio server, through a context that offers
what those methods use (metadata, peer, abort, trailing metadata). Streaming RPCs answer
UNIMPLEMENTED, as they do on the grpc.aio server.

The frames of a request are parsed where they arrive, with no thread hop: grpc.aio runs its
HTTP/2 stack in grpc core's threads and hands each call to the event loop, which on a tiny model
costs several times the inference's own front-end work (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any, cast

import grpc
import hpack

from surge.protocol.http2 import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Http2Error,
    encode_headers,
    frame,
    frame_content,
    read_frames,
)
from surge.server.grpc_calls import (
    CallContext,
    CallError,
    CallHeaders,
    Handler,
    Stream,
    call_headers,
    request_message,
    status_trailers,
)
from surge.server.limits import ConnectionLimits

log = logging.getLogger(__name__)

RECEIVE_WINDOW = 16 * 1024 * 1024  # what each stream and the connection may send ahead
RECEIVE_FRAME = 1024 * 1024  # the largest frame a client may send us
MAX_HEADER_LIST = 64 * 1024  # as MAX_HEAD_BYTES for HTTP
# Requests of the largest size one connection may hold in memory while they arrive.
MESSAGES_PER_CONNECTION = 4

RESPONSE_HEADERS = encode_headers([(b"content-type", b"application/grpc"),
                                   (b"grpc-accept-encoding", b"identity,deflate,gzip")],
                                  status_200=True)


class ServerState:
    """What every connection of one listener shares: the calls it serves and its limits."""

    def __init__(self, methods: dict[str, tuple[Handler, Any]], limits: ConnectionLimits,
                 max_message_bytes: int) -> None:
        self.methods = methods
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self.connections: set[GrpcProtocol] = set()
        self.draining = False


class GrpcProtocol(asyncio.Protocol):
    """One client connection: HTTP/2 frames in, gRPC calls dispatched, answers framed out."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: Any = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_LIST
        self.streams: dict[int, Stream] = {}
        self.known_blocks: dict[bytes, CallHeaders] = {}  # see _decode
        self.last_stream = 0
        self.header_block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments)
        self.send_window = DEFAULT_WINDOW  # the client's connection window for our DATA
        self.initial_send_window = DEFAULT_WINDOW
        self.max_send_frame = DEFAULT_FRAME
        self.unacked = 0  # received DATA bytes not yet credited back (connection)
        self.buffered = 0  # bytes of requests received and not yet parsed
        self.peer = ""
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""  # handshake, body or idle
        self.going_away = False  # a GOAWAY was sent: close once the open calls are answered
        self.out: list[bytes] = []  # frames to send at the end of this turn of the loop
        self.drained: asyncio.Event | None = None
        self.by_type: dict[int, Callable[[int, int, bytes], None]] = {
            DATA: self._data, HEADERS: self._headers, CONTINUATION: self._continuation,
            SETTINGS: self._settings, WINDOW_UPDATE: self._window_update, PING: self._ping,
            RST_STREAM: self._reset_by_client, GOAWAY: self._goaway_from_client,
            PUSH_PROMISE: self._push_promise}

    # --- connection ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # uvloop's are not asyncio.Transport
        self.transport = transport
        if len(self.state.connections) >= self.state.limits.max_connections:
            transport.abort()
            return
        self.state.connections.add(self)
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple):
            family = "ipv6" if ":" in address[0] else "ipv4"
            self.peer = f"{family}:{address[0]}:{address[1]}"
        transport.write(frame(SETTINGS, 0, 0, struct.pack(
            ">HIHIHIHI", MAX_CONCURRENT_STREAMS, self.state.limits.max_streams,
            INITIAL_WINDOW_SIZE, RECEIVE_WINDOW, MAX_FRAME_SIZE, RECEIVE_FRAME,
            MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST))
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECEIVE_WINDOW - DEFAULT_WINDOW)))
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
        except Http2Error as exc:
            self._goaway(exc.code, str(exc))
        except hpack.HPACKError as exc:
            self._goaway(COMPRESSION_ERROR, f"header block: {exc}")
        except (ValueError, IndexError, struct.error, UnicodeDecodeError) as exc:
            log.debug("gRPC connection from %s closed: %s", self.peer, exc)
            self._goaway(PROTOCOL_ERROR, "malformed frame")

    def _parse(self) -> None:
        buffer = self.buffer
        if not self.preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    raise Http2Error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if buffer[:len(PREFACE)] != PREFACE:
                raise Http2Error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            del buffer[:len(PREFACE)]
            self.preface = True
        for kind, flags, stream_id, payload in read_frames(buffer, RECEIVE_FRAME):
            if self.transport is None or self.transport.is_closing():
                break  # a GOAWAY went out: what follows it is not read
            self._frame(kind, flags, stream_id, payload)

    # --- frames ----------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.header_block is not None and kind != CONTINUATION:
            raise Http2Error(PROTOCOL_ERROR, "header block interrupted")
        handler = self.by_type.get(kind)
        if handler is not None:  # PRIORITY and unknown types are ignored (RFC 9113 4.1, 5.3.2)
            handler(flags, stream_id, payload)

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) != 8:
            raise Http2Error(PROTOCOL_ERROR, "bad PING")
        if not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))

    def _goaway_from_client(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._goaway(NO_ERROR, "")  # the calls in progress finish, then the connection closes

    def _push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise Http2Error(PROTOCOL_ERROR, "a client may not push")

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise Http2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = frame_content(flags, payload)
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise Http2Error(PROTOCOL_ERROR, "HEADERS priority exceeds the frame")
        self.header_block = (stream_id, flags, bytearray(payload[start:end]))
        if flags & END_HEADERS:
            self._end_headers()

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.header_block is None or self.header_block[0] != stream_id:
            raise Http2Error(PROTOCOL_ERROR, "unexpected CONTINUATION")
        self.header_block[2].extend(payload)
        if len(self.header_block[2]) > MAX_HEADER_LIST:
            raise Http2Error(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._end_headers()

    def _end_headers(self) -> None:
        assert self.header_block is not None
        stream_id, flags, block = self.header_block
        self.header_block = None
        call = self._decode(bytes(block))  # even for a stream refused: it updates the table
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: only END_STREAM matters
            if flags & END_STREAM:
                self._request_complete(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise Http2Error(PROTOCOL_ERROR, f"stream {stream_id} reused or even")
        self.last_stream = stream_id
        if self.state.draining or len(self.streams) >= self.state.limits.max_streams:
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        stream = Stream(stream_id, call, self.initial_send_window)
        self.streams[stream_id] = stream
        if stream.path not in self.state.methods:  # answered now: a streaming client waits
            self._finish(stream, grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {stream.path}")
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR)))
        elif flags & END_STREAM:
            self._request_complete(stream)

    def _decode(self, block: bytes) -> CallHeaders:
        """What a header block says. A block of one-byte indexed fields only (a client's
        repeated call, once its headers are in the table) changes no table and decodes the
        same until another block does: those are kept, decoded once."""
        call = self.known_blocks.get(block)
        if call is not None:
            return call
        call = call_headers(cast(list[tuple[str, str]], self.decoder.decode(block)))
        if block and min(block) >= 0x80:
            if len(self.known_blocks) < 64:
                self.known_blocks[block] = call
        else:
            self.known_blocks.clear()  # the table may have changed
        return call

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None:
            self._credit(None, len(payload))
            return  # a stream we reset or refused, or DATA after END_STREAM: dropped
        self._credit(stream, len(payload))
        start, end = frame_content(flags, payload)
        stream.body += payload[start:end]
        self.buffered += end - start
        refusal = self._too_much(stream)
        if refusal:
            self._finish(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR)))
            return
        if flags & END_STREAM:
            self._request_complete(stream)

    def _too_much(self, stream: Stream) -> str:
        """Why the bytes received so far are refused ("" when they are not): a message over
        the size cap, or the connection's messages in progress over a few times that."""
        limit = self.state.max_message_bytes
        if len(stream.body) > limit + 5:
            return f"Received message larger than max ({len(stream.body) - 5} vs. {limit})"
        if self.buffered > MESSAGES_PER_CONNECTION * (limit + 5):
            return (f"the connection's calls in progress hold more than "
                    f"{MESSAGES_PER_CONNECTION} x {limit} bytes of requests")
        return ""

    def _release(self, stream: Stream) -> None:
        self.buffered -= len(stream.body)
        stream.body = bytearray()

    def _credit(self, stream: Stream | None, size: int) -> None:
        """Give received bytes back to the client's windows once half of one is used."""
        self.unacked += size
        if self.unacked >= RECEIVE_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        if stream is None:
            return
        stream.unacked += size
        if stream.unacked >= RECEIVE_WINDOW // 2:  # a long message: its stream window too
            self._write(frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", stream.unacked)))
            stream.unacked = 0

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) % 6:
            raise Http2Error(PROTOCOL_ERROR, "bad SETTINGS")
        if flags & ACK:
            return
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                delta = value - self.initial_send_window
                self.initial_send_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value < 1 << 24:
                    raise Http2Error(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.max_send_frame = value
            # HEADER_TABLE_SIZE does not matter: nothing we send is indexed.
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Http2Error(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.send_window += increment
        self._flush_pending()

    def _reset_by_client(self, flags: int, stream_id: int, payload: bytes = b"") -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self._release(stream)
            stream.closed = True
            if stream.task is not None:
                stream.task.cancel()  # as grpc.aio: the handler's await is cancelled

    # --- calls -----------------------------------------------------------------------------

    def _request_complete(self, stream: Stream) -> None:
        stream.task = asyncio.get_running_loop().create_task(self._call(stream))

    async def _call(self, stream: Stream) -> None:
        context = CallContext(stream.metadata, self.peer)
        try:
            handler, request_class = self.state.methods[stream.path]
            request = request_class.FromString(request_message(stream.body, stream.encoding))
            self._release(stream)
            if stream.timeout is None:
                response = await handler(request, context)
            else:
                response = await asyncio.wait_for(handler(request, context), stream.timeout)
        except grpc.aio.AbortError:
            self._finish(stream, context.code, context.details, context.trailing)
            return
        except TimeoutError:
            self._finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            return
        except CallError as exc:
            self._finish(stream, exc.code, str(exc))
            return
        except asyncio.CancelledError:
            if not stream.closed:
                self._finish(stream, grpc.StatusCode.CANCELLED, "Cancelled")
            raise
        except Exception:
            log.exception("unhandled error in %s", stream.path)
            self._finish(stream, grpc.StatusCode.INTERNAL, "Unexpected error")
            return
        self._finish(stream, grpc.StatusCode.OK, "", context.trailing,
                     response.SerializeToString())

    def _finish(self, stream: Stream, code: grpc.StatusCode, details: str,
                metadata: tuple[tuple[str, Any], ...] = (), message: bytes | None = None) -> None:
        """Answer the call (headers, the message if any, status trailers) and forget it."""
        if stream.closed or self.transport is None or self.transport.is_closing():
            return
        stream.closed = True
        trailers = status_trailers(code, details, metadata)
        if message is None:  # trailers-only response
            block = RESPONSE_HEADERS + trailers
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        else:
            self._write(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
            stream.pending = struct.pack(">BI", 0, len(message)) + message
            stream.trailers = trailers
            self._send_data(stream)
            return
        self._forget(stream)

    def _send_data(self, stream: Stream) -> None:
        """Send what the windows allow of the stream's message; the trailers after the last."""
        data = stream.pending
        allowed = max(0, min(len(data), self.send_window, stream.send_window))
        chunks = [frame(DATA, 0, stream.id, data[i:i + self.max_send_frame])
                  for i in range(0, allowed, self.max_send_frame)]
        self.send_window -= allowed
        stream.send_window -= allowed
        stream.pending = data[allowed:]
        if not stream.pending:
            chunks.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.trailers))
        self._write(b"".join(chunks))
        if not stream.pending:
            self._forget(stream)

    def _flush_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending and self.send_window > 0 and stream.send_window > 0:
                self._send_data(stream)

    def _forget(self, stream: Stream) -> None:
        self._release(stream)
        self.streams.pop(stream.id, None)
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
            self._goaway(NO_ERROR, "")
            self._close()
        elif self.timer_kind != "idle":
            self._arm("idle", limits.idle_timeout_s)

    # --- plumbing --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue frames; they go out in one write when this turn of the event loop ends, with
        those of every other call answered in it (a write per answer cost a system call)."""
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(data)

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def _goaway(self, code: int, reason: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self.going_away:
            self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code)
                              + reason.encode()[:256]))
        self.going_away = True
        if code == NO_ERROR and self.streams:
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
        self._goaway(ENHANCE_YOUR_CALM if kind == "body" else NO_ERROR, f"{kind} timeout")
        self._close()

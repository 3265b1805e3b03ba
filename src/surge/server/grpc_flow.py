"""What a client may send on one connection of Surge's HTTP/2 gRPC listener, and what its calls
hold (surge/server/grpc_h2.py): the receive windows, credited back as requests are received
(a streaming call's as its handler reads them), and the bytes of requests held in memory.

A client that sends past a window breaks the protocol (FLOW_CONTROL_ERROR): without that
check the windows would only be advice. A streaming call whose handler is behind (its model's
queue is full, or its client does not read the answers) stops getting credit once STREAM_HELD
of its requests wait, so the client waits; the connection's requests in progress are bounded
by MESSAGES_PER_CONNECTION messages of the largest size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from surge.protocol import http2 as h2
from surge.server.grpc_calls import Stream, message_over, too_large

RECEIVE_WINDOW = 16 * 1024 * 1024  # what each stream and the connection may send ahead
# Requests of the largest size one connection may hold in memory while they arrive.
MESSAGES_PER_CONNECTION = 4
# A streaming call's requests received and not yet read by its handler, past which its window
# is no longer credited.
STREAM_HELD = 4 * 1024 * 1024


class ReceiveFlow:
    """One connection's receive windows and the request bytes its calls hold."""

    def __init__(self, write: Callable[[bytes], None], max_message_bytes: int) -> None:
        self._write = write
        self.max_message_bytes = max_message_bytes
        self.window = RECEIVE_WINDOW  # what the client may still send (connection)
        self.unacked = 0  # received bytes not yet credited back (connection)
        self.buffered = 0  # bytes of requests received and not yet parsed or read

    def received(self, size: int) -> None:
        """DATA of `size` bytes arrived on the connection (any stream)."""
        self.window -= size
        if self.window < 0:
            raise h2.Http2Error(h2.FLOW_CONTROL_ERROR, "DATA past the connection's window")
        self.unacked += size
        if self.unacked >= RECEIVE_WINDOW // 2:  # half the window used: given back
            self._write(h2.frame(h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
            self.window += self.unacked
            self.unacked = 0

    def stream_received(self, stream: Stream, size: int) -> None:
        """DATA of `size` bytes arrived on a stream that reads it."""
        stream.receive_window -= size
        if stream.receive_window < 0:
            raise h2.Http2Error(h2.FLOW_CONTROL_ERROR, f"DATA past stream {stream.id}'s window")
        self._credit_stream(stream, size)

    def _credit_stream(self, stream: Stream, size: int) -> None:
        if stream.held > STREAM_HELD:  # its handler is behind: the client waits
            stream.deferred += size
            return
        stream.unacked += size
        if stream.unacked >= RECEIVE_WINDOW // 2:
            self._write(h2.frame(h2.WINDOW_UPDATE, 0, stream.id, struct.pack(">I", stream.unacked)))
            stream.receive_window += stream.unacked
            stream.unacked = 0

    def arrived(self, stream: Stream, size: int) -> str:
        """`size` bytes of a request added to the stream's body; why they are refused ("" when
        they are not): a message over the size cap, or the connection's requests in progress
        over a few times that."""
        self.buffered += size
        limit = self.max_message_bytes
        # Each message on its own (not the body's bytes, which may hold the end of one and
        # the start of the next), refused once more than the cap of it arrived (as grpc core,
        # which reads it whole), named by the size its prefix declares.
        declared = message_over(stream.body, limit, every=stream.inbox is not None)
        if declared:
            return too_large(declared, limit)
        if stream.inbox is None and len(stream.body) > limit + 5:
            return "a unary call carries one request message, this one more"
        if self.buffered > MESSAGES_PER_CONNECTION * (limit + 5):
            return (f"the connection's calls in progress hold more than "
                    f"{MESSAGES_PER_CONNECTION} x {limit} bytes of requests")
        return ""

    def read_by_handler(self, stream: Stream, wire: int) -> None:
        """A streaming call's request (`wire` bytes with its prefix) taken by its handler: no
        longer held, and the credit kept back given once the handler has caught up to half
        of STREAM_HELD."""
        if stream.held < wire:
            return  # the call ended meanwhile: its bytes were released
        stream.held -= wire
        self.buffered -= wire
        if stream.deferred and stream.held <= STREAM_HELD // 2 and not stream.closed:
            deferred, stream.deferred = stream.deferred, 0
            self._credit_stream(stream, deferred)

    def release(self, stream: Stream) -> None:
        """The stream's request bytes are no longer held here (parsed, or the call ended)."""
        self.buffered -= len(stream.body) + stream.held
        stream.body, stream.held = bytearray(), 0

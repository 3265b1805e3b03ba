"""The HTTP/2 framing (RFC 9113) that gRPC's unary calls use, for Surge's gRPC listener and the
load generator's gRPC client: frame layout, types, flags, settings, error codes, and header
blocks written as HPACK literals (RFC 7541), which keep no table state. Header blocks are read
with `hpack`."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">IBI")  # 24-bit length (with the type in the low byte), flags, id

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20

# SETTINGS identifiers (6.5.2) and error codes (7).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, _, STREAM_CLOSED, FRAME_SIZE_ERROR, \
    REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = range(10)
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535  # every window's size until SETTINGS or WINDOW_UPDATE say otherwise
DEFAULT_FRAME = 16_384  # the largest frame a peer accepts until its SETTINGS say otherwise


class Http2Error(Exception):
    """A connection error: the peer broke the protocol (GOAWAY with `code`, then close)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack((len(payload) << 8) | kind, flags, stream_id) + payload


def data_frames(stream_id: int, data: bytes | bytearray | memoryview, max_frame: int, *,
                end_stream: bool = False) -> bytearray:
    """`data` as DATA frames of at most `max_frame` bytes, END_STREAM on the last if asked:
    written into one buffer, so a tensor's bytes are copied once on their way out."""
    view = memoryview(data)
    frames = bytearray()
    starts = range(0, len(view), max_frame)
    for start in starts:
        chunk = view[start:start + max_frame]
        last = end_stream and start == starts[-1]
        frames += FRAME_HEADER.pack((len(chunk) << 8) | DATA, END_STREAM if last else 0,
                                    stream_id)
        frames += chunk
    return frames


def read_frames(buffer: bytearray, max_length: int) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each complete frame at the start of `buffer`, which
    loses their bytes (a frame not yet complete stays). Each payload is copied once, through
    a view of the buffer (a slice of a bytearray would be copied twice)."""
    frames, offset, end = [], 0, len(buffer)
    with memoryview(buffer) as view:
        while end - offset >= 9:
            head, flags, stream_id = FRAME_HEADER.unpack_from(view, offset)
            length = head >> 8
            if length > max_length:
                raise Http2Error(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - offset - 9 < length:
                break
            frames.append((head & 0xFF, flags, stream_id & 0x7FFFFFFF,
                           bytes(view[offset + 9:offset + 9 + length])))
            offset += 9 + length
    del buffer[:offset]
    return frames


def frame_content(flags: int, payload: bytes) -> tuple[int, int]:
    """Where a DATA or HEADERS frame's content starts and ends (6.1: PADDED)."""
    if not flags & PADDED:
        return 0, len(payload)
    if not payload or payload[0] >= len(payload):
        raise Http2Error(PROTOCOL_ERROR, "padding exceeds the frame")
    return 1, len(payload) - payload[0]


def hpack_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with `first` in the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing (new name): no table state to keep."""
    return b"".join((b"\x00", hpack_integer(len(name), 7), name,
                     hpack_integer(len(value), 7), value))


def encode_headers(headers: list[tuple[bytes, bytes]], *, status_200: bool = False) -> bytes:
    """A header block: `:status: 200` from the static table (index 8), then literals."""
    return (b"\x88" if status_200 else b"") + b"".join(_literal(k, v) for k, v in headers)


class CoalescedWrites(asyncio.Protocol):
    """An asyncio protocol whose frames queued in one turn of the event loop go out in one
    write at its end, with those of every other call in it (a write per frame or answer cost a
    system call each)."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.out: list[bytes | bytearray] = []

    def _write(self, data: bytes | bytearray) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(data)

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

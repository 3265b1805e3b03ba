"""The gRPC side of a call on Surge's HTTP/2 listener (surge/server/grpc_h2.py): which method a
path names, what the request headers say (metadata, deadline, compression), the context the
servicer's methods are given, and the status trailers of the answer."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import grpc
import hpack
from google.protobuf.message import DecodeError
from hpack.hpack import decode_integer
from hpack.table import HeaderTable

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.http2 import ENHANCE_YOUR_CALM, Http2Error, encode_headers

SERVICE = "/inference.GRPCInferenceService/"
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

# A call whose header list (RFC 9113 6.5.2) exceeds MAX_HEADER_LIST, advertised as
# SETTINGS_MAX_HEADER_LIST_SIZE, is refused on its stream (RESOURCE_EXHAUSTED); the connection
# goes on. Past the hard limits a block is not decoded, or not to its end, and the HPACK table
# is lost: so is the connection (GOAWAY ENHANCE_YOUR_CALM). Decoding a block within them holds
# the event loop 25-35 ms at worst (docs/protocol.md).
MAX_HEADER_LIST = 64 * 1024  # as MAX_HEAD_BYTES for HTTP
MAX_HEADER_BLOCK = 256 * 1024  # a block's encoded bytes: its HEADERS and CONTINUATION frames
HARD_HEADER_LIST = 256 * 1024  # a block's decoded size


def parse_timeout(text: str) -> float | None:
    """Seconds in a `grpc-timeout` header ("100m", "5S": at most 8 ASCII digits and a unit);
    None when absent or malformed."""
    digits = text[:-1]
    if not 1 <= len(digits) <= 8 or text[-1] not in _TIMEOUT_UNITS or not (
            digits.isascii() and digits.isdigit()):
        return None
    return int(digits) * _TIMEOUT_UNITS[text[-1]]


class CallContext:
    """What InferenceServicer's methods use of grpc.aio's ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, Any], ...], peer: str) -> None:
        self._metadata = metadata
        self._peer = peer
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.trailing: tuple[tuple[str, Any], ...] = ()
        self.deadline: float | None = None  # on the event loop's clock (grpc-timeout)

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline; None for a call without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = tuple(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Any = ()) -> None:
        self.code, self.details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError(f"{code.name}: {details}")


def past_deadline(context: Any) -> bool:
    """Whether a call cancelled was cancelled as its deadline (grpc-timeout) passed, rather
    than by its client: counted `expired` as a request past its V2 timeout is, not
    `cancelled`."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= DEADLINE_SLACK_S


# A call cancelled this close to its deadline was cancelled by it: by the server's timer (on
# uvloop's clock, which ticks in whole milliseconds), or by the client's own, which started
# before the request was sent and resets the call as its deadline passes.
DEADLINE_SLACK_S = 0.02


Handler = Callable[[Any, CallContext], Any]


class Method(NamedTuple):
    handler: Handler  # (request, context) -> response; streaming: (requests, context) -> answers
    request_class: Any
    streaming: bool  # requests and answers both streamed


def service_methods(servicer: Any) -> dict[str, Method]:
    """`/package.Service/Method` -> the servicer's method for each RPC of the service (the
    servicer's own, or grpc's UNIMPLEMENTED one). One-sided streams are not served."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return {
        SERVICE + method.name: Method(getattr(servicer, method.name),
                                      getattr(pb, method.input_type.name),
                                      method.client_streaming)
        for method in service.methods
        if method.client_streaming == method.server_streaming
    }


class CallHeaders(NamedTuple):
    """What a call's request headers say."""

    path: str
    metadata: tuple[tuple[str, Any], ...]
    timeout: float | None  # seconds
    encoding: str  # grpc-encoding
    problem: str = ""  # why the call is refused before it runs ("" when it is not)
    size: int = 0  # the header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it


def status_trailers(code: grpc.StatusCode, details: str,
                     metadata: tuple[tuple[str, Any], ...]) -> bytes:
    fields = [(b"grpc-status", str(code.value[0]).encode())]
    if details:
        fields.append((b"grpc-message", _percent(details)))
    fields.extend(_metadata_field(key, value) for key, value in metadata)
    return encode_headers(fields)


def _percent(text: str) -> bytes:
    """grpc-message's percent-encoding (everything outside printable ASCII, and '%')."""
    raw = text.encode()
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def _metadata_field(key: str, value: Any) -> tuple[bytes, bytes]:
    if key.endswith("-bin"):
        return key.encode(), base64.b64encode(value).rstrip(b"=")
    return key.encode(), value.encode() if isinstance(value, str) else value


class CallError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def call_headers(headers: list[tuple[str, str]]) -> CallHeaders:
    """What a call's request headers say; a binary metadata value that is not base64 refuses
    that call (INVALID_ARGUMENT), not the connection."""
    path, timeout, encoding, problem = "", None, "identity", ""
    metadata: list[tuple[str, Any]] = []
    size = 32 * len(headers)  # RFC 9113 6.5.2: name, value and 32 bytes a field
    for key, value in headers:
        size += len(key.encode()) + len(value.encode())
        if key == ":path":
            path = value
        elif key == "grpc-timeout":
            timeout = parse_timeout(value)
        elif key == "grpc-encoding":
            encoding = value
        elif key.startswith(":") or key in ("content-type", "te"):
            continue
        elif key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value + "=" * (-len(value) % 4),
                                                       validate=True)))
            except ValueError:
                problem = f"metadata {key!r} is not base64"
        else:
            metadata.append((key, value))
    return CallHeaders(path, tuple(metadata), timeout, encoding, problem, size)


def take_messages(body: bytearray) -> list[tuple[int, bytes]]:
    """(compressed flag, payload) of each complete length-prefixed message at the start of
    `body`, which loses their bytes."""
    messages, offset = [], 0
    with memoryview(body) as view:
        while len(view) - offset >= 5:
            compressed, length = struct.unpack_from(">BI", view, offset)
            if len(view) - offset - 5 < length:
                break
            messages.append((compressed, bytes(view[offset + 5:offset + 5 + length])))
            offset += 5 + length
    del body[:offset]
    return messages


def message_over(body: bytearray, limit: int, every: bool) -> int:
    """The size its prefix declares of the first message at the start of `body` of which more
    than `limit` bytes arrived (0: none): of the first message only unless `every` (a stream's
    body may hold the end of one message and the start of the next)."""
    offset = 0
    while len(body) - offset >= 5:
        declared = struct.unpack_from(">I", body, offset + 1)[0]
        if min(declared, len(body) - offset - 5) > limit:
            return int(declared)
        if not every:
            break
        offset += 5 + declared
    return 0


def too_large(size: int, limit: int) -> str:
    """grpc core's words for a message over the cap (tritonclient users see both servers)."""
    return f"SERVER: Received message larger than max ({size} vs. {limit})"


def request_message(body: bytearray, encoding: str, limit: int) -> bytes | memoryview:
    """The one message of a unary request, decompressed (at most `limit` bytes): a view of
    `body` when it is not compressed (parsed in place, not copied first)."""
    if len(body) < 5 or struct.unpack_from(">I", body, 1)[0] != len(body) - 5:
        raise CallError(grpc.StatusCode.INTERNAL, _not_one_message(body))
    return decompressed(body[0], memoryview(body)[5:], encoding, limit)


def _not_one_message(body: bytearray) -> str:
    """Why a unary request's body is not one whole message (the client ended its half of
    the call early, or sent more)."""
    if not body:
        return "the call ended without a request message"
    if len(body) < 5:
        return f"the call ended inside a message's 5-byte prefix ({len(body)} bytes)"
    declared = struct.unpack_from(">I", body, 1)[0]
    if declared > len(body) - 5:
        return f"the call ended inside its request message ({len(body) - 5} of {declared} bytes)"
    return "a unary call carries one request message, this one more"


def decompressed(compressed: int, payload: bytes | memoryview, encoding: str,
                 limit: int) -> bytes | memoryview:
    """A message's bytes; a compressed one may not expand past `limit` (the cap that holds
    for uncompressed messages: a few kilobytes of gzip would otherwise fill the memory)."""
    if not compressed:
        return payload
    if compressed != 1:
        raise CallError(grpc.StatusCode.INTERNAL,
                        f"a message's compressed flag is 0 or 1, got {compressed}")
    if encoding == "identity":  # as grpc core words it: the call named no grpc-encoding
        raise CallError(grpc.StatusCode.INTERNAL, "Compression bit set but no encoding configured")
    if encoding == "gzip":
        return _decompress(payload, 16 + zlib.MAX_WBITS, limit)
    if encoding == "deflate":
        return _decompress(payload, zlib.MAX_WBITS, limit)
    raise CallError(grpc.StatusCode.UNIMPLEMENTED, f"compression {encoding!r} is not supported")


def _decompress(payload: bytes | memoryview, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        message = inflater.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise CallError(grpc.StatusCode.INTERNAL, f"cannot decompress the message: {exc}") from None
    if len(message) <= limit and not inflater.eof:
        raise CallError(grpc.StatusCode.INTERNAL, "cannot decompress the message: truncated")
    if len(message) > limit:
        raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"Received message larger than max (over {limit} bytes decompressed)")
    return message


def parsed(request_class: Any, message: bytes | memoryview) -> Any:
    """A request message parsed; one that is not a `request_class` is the client's error."""
    try:
        return request_class.FromString(message)
    except DecodeError as exc:
        raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"cannot parse the {request_class.__name__}: {exc}") from None


def oversized(size: int) -> str:
    return (f"request headers of {size} bytes exceed the limit of {MAX_HEADER_LIST} bytes "
            "(SETTINGS_MAX_HEADER_LIST_SIZE)")


def check_block_size(size: int) -> None:
    """A header block's fragments so far: past MAX_HEADER_BLOCK the connection ends."""
    if size > MAX_HEADER_BLOCK:
        raise Http2Error(ENHANCE_YOUR_CALM,
                         f"header block over {MAX_HEADER_BLOCK} bytes ({size} so far)")


class _CountedTable(HeaderTable):
    """hpack's dynamic table, counting its changes (an entry added, a size set)."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, value)  # type: ignore[attr-defined]


def _literal_length(data: memoryview, should_index: bool) -> int:
    """The bytes of the literal field at the start of `data` (RFC 7541 6.2): its first
    byte and name index, or its name's length and name, then its value's length and value."""
    prefix = 6 if should_index else 4
    if data[0] & (0xFF >> (8 - prefix)):
        offset = decode_integer(data, prefix)[1]
    else:
        length, consumed = decode_integer(data[1:], 7)
        offset = 1 + consumed + length
    length, consumed = decode_integer(data[offset:], 7)
    return offset + consumed + length


class _Decoder(hpack.Decoder):
    """hpack's decoder, given each literal field alone: hpack copies the rest of the block
    for each literal, so a block of many small fields took time growing with its square
    (1 MiB: 3.4 s; 0.41 s given each field alone)."""

    def _decode_literal(self, data: bytes | memoryview,
                        should_index: bool) -> tuple[Any, int]:
        view = memoryview(data)
        return super()._decode_literal(view[:_literal_length(view, should_index)], should_index)


class HeaderBlocks:
    """A connection's header blocks read: HPACK-decoded, then what they say of the call.
    A block decoding past `max_list_size` raises hpack.OversizedHeaderListError, with the
    table left part-way: the connection cannot go on."""

    KEPT = 64  # blocks kept decoded
    KEPT_BYTES = 1024  # the largest block kept

    def __init__(self, max_list_size: int) -> None:
        self.decoder = _Decoder()
        self.decoder.header_table = self.table = _CountedTable()
        self.decoder.max_header_list_size = max_list_size
        self.known: dict[bytes, CallHeaders] = {}

    def decode(self, block: bytes) -> CallHeaders:
        """A block that changed no entry of the table (a client's repeated call: indexed
        fields, literals not indexed) decodes the same until another block changes the
        table: those are kept, decoded once (decoding cost more than the rest of a small
        call's front-end work)."""
        call = self.known.get(block)
        if call is not None:
            return call
        changes = self.table.changes
        call = call_headers(cast(list[tuple[str, str]], self.decoder.decode(block)))
        if self.table.changes != changes:
            self.known.clear()  # the same bytes may now name other entries
        elif len(block) <= self.KEPT_BYTES:
            if len(self.known) >= self.KEPT:
                self.known.clear()
            self.known[block] = call
        return call


class Stream:
    """One call: what its headers say, the request bytes so far, its task and windows."""

    __slots__ = ("id", "path", "metadata", "timeout", "encoding", "body", "unacked", "task",
                 "inbox", "held", "deferred", "receive_window", "send_window", "headers_sent",
                 "pending", "drained", "trailers", "closed")

    def __init__(self, stream_id: int, call: CallHeaders, windows: tuple[int, int]) -> None:
        self.id = stream_id
        self.path, self.metadata, self.timeout, self.encoding = call[:4]
        self.body = bytearray()
        self.unacked = 0  # received bytes not yet credited back to the stream's window
        self.task: asyncio.Task[None] | None = None
        # A streaming call's requests as they arrive, with their bytes on the wire (None after
        # the client's last one); `held`: their bytes not yet read by the handler; `deferred`:
        # the credit kept back while the handler is behind.
        self.inbox: asyncio.Queue[tuple[bytes | memoryview, int] | None] | None = None
        self.held = 0
        self.deferred = 0
        self.receive_window, self.send_window = windows  # what the client / we may send
        self.headers_sent = False
        self.pending = bytearray()  # DATA the client's windows do not yet allow
        self.drained: asyncio.Future[None] | None = None  # set once `pending` is small again
        self.trailers = b""  # the status block, sent after the last of `pending`
        self.closed = False

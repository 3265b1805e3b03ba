"""The two gRPC stacks (`--grpc-server surge`, Surge's own HTTP/2; `--grpc-server grpcio`, grpc
core's server) answer the same request with the same status and message: tritonclient users
switch between them. Each test serves one servicer on both, in this process."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import hpack
import pytest

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.protocol.http2 import PREFACE, encode_headers
from surge.server.grpc_listener import start_grpc_h2_server
from surge.server.grpc_server import start_grpc_server

pytestmark = pytest.mark.timeout(60)

LIMIT = 1 << 20  # the message cap both stacks are given (--max-body-mb 1)
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer and ModelStreamInfer answer each request with its model name."""

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ModelInferResponse(model_name=request.model_name)

    async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:  # noqa: N802
        async for request in requests:
            yield pb.ModelStreamInferResponse(
                infer_response=pb.ModelInferResponse(model_name=request.model_name))


Addresses = dict[str, str]  # stack -> host:port


def both_stacks(body: Callable[[Addresses], Awaitable[None]]) -> Callable[[], None]:
    """A test running `body` against each stack serving one EchoServicer."""

    def test() -> None:
        async def main() -> None:
            servicer = EchoServicer()
            h2, _, h2_port = await start_grpc_h2_server(
                None, "127.0.0.1", 0, servicer=servicer, max_message_bytes=LIMIT)
            core, _, core_port = await start_grpc_server(
                None, "127.0.0.1", 0, servicer=servicer, max_message_bytes=LIMIT)  # type: ignore[arg-type]
            try:
                await body({"surge": f"127.0.0.1:{h2_port}", "grpcio": f"127.0.0.1:{core_port}"})
            finally:
                await h2.stop(0.5)
                await core.stop(0.5)

        asyncio.run(main())

    test.__name__ = body.__name__
    return test


def _request(name: str, size: int) -> pb.ModelInferRequest:
    """A request of `size` bytes serialized, or a byte less (a length's varint grows)."""
    overhead = pb.ModelInferRequest(model_name=name, raw_input_contents=[b"x" * size]).ByteSize()
    return pb.ModelInferRequest(model_name=name,
                                raw_input_contents=[b"x" * (2 * size - overhead)])


async def _status(address: str, call: Callable[[Any], Awaitable[Any]]) -> tuple[str, str]:
    async with grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 8 * LIMIT)]) as channel:
        try:
            await call(pb_grpc.GRPCInferenceServiceStub(channel))
        except grpc.aio.AioRpcError as error:
            return error.code().name, error.details() or ""
    return "OK", ""


@both_stacks
async def test_a_message_past_the_cap_gets_the_same_answer(addresses: Addresses) -> None:
    """The answer names the message's size (not the bytes received when it was refused)."""
    big = _request("big", 2 * LIMIT)
    size = big.ByteSize()

    async def unary(stub: Any) -> Any:
        return await stub.ModelInfer(big, timeout=20)

    async def streamed(stub: Any) -> Any:
        return [answer async for answer in stub.ModelStreamInfer(iter([big]), timeout=20)]

    for call in (unary, streamed):
        answers = {stack: await _status(address, call) for stack, address in addresses.items()}
        assert answers["surge"] == answers["grpcio"], call.__name__
        assert answers["surge"] == (
            "RESOURCE_EXHAUSTED", f"SERVER: Received message larger than max ({size} vs. "
                                  f"{LIMIT})")


def _raw_call(path: str, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = (),
              frame: int = 16_384) -> bytes:
    """The client preface, SETTINGS, and one call on stream 1: HEADERS, `body` in DATA frames
    of `frame` bytes, the last ending the stream."""
    block = encode_headers([(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                            (b":authority", b"test"), (b"content-type", b"application/grpc"),
                            (b"te", b"trailers"), *headers])
    # SETTINGS_INITIAL_WINDOW_SIZE 16 MiB (grpc core's server did not answer after an empty
    # SETTINGS frame)
    settings = struct.pack(">IBI", 6 << 8 | 4, 0, 0) + struct.pack(">HI", 4, 1 << 24)
    out = PREFACE + settings + struct.pack(">IBI", len(block) << 8 | 1, 4, 1) + block
    chunks = [body[i:i + frame] for i in range(0, len(body), frame)] or [b""]
    for i, chunk in enumerate(chunks):
        out += struct.pack(">IBI", len(chunk) << 8, int(i == len(chunks) - 1), 1) + chunk
    return out


def _message(payload: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


async def _raw_answer(address: str, data: bytes) -> tuple[str, str, int]:
    """(grpc-status, grpc-message, answers) of the call in `data` (a hang fails the test)."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    buffer, decoder, fields, answers = b"", hpack.Decoder(), dict[str, str](), 0
    try:
        async with asyncio.timeout(20):
            while "grpc-status" not in fields:
                buffer += await reader.read(65536)
                while len(buffer) >= 9 and len(buffer) >= 9 + (buffer[0] << 16 | buffer[1] << 8
                                                              | buffer[2]):
                    head, _, stream_id = struct.unpack_from(">IBI", buffer)
                    payload, buffer = buffer[9:9 + (head >> 8)], buffer[9 + (head >> 8):]
                    if head & 0xFF == 1:
                        fields.update(decoder.decode(payload))
                    answers += (head & 0xFF) == 0 and stream_id == 1
    finally:
        writer.close()
    return fields["grpc-status"], fields.get("grpc-message", ""), answers


@both_stacks
async def test_a_compressed_flag_without_an_encoding_is_internal(addresses: Addresses) -> None:
    """gRPC: a message flagged compressed on a call that names no grpc-encoding is INTERNAL
    (it was UNIMPLEMENTED, "compression 'identity' is not supported", on Surge's stack)."""
    data = _raw_call(INFER, _message(pb.ModelInferRequest(model_name="m").SerializeToString(), 1))
    answers = {stack: await _raw_answer(address, data) for stack, address in addresses.items()}
    assert answers["surge"] == answers["grpcio"]
    assert answers["surge"] == ("13", "Compression bit set but no encoding configured", 0)


@both_stacks
async def test_a_compressed_flag_other_than_0_or_1_is_named(addresses: Addresses) -> None:
    data = _raw_call(INFER, _message(pb.ModelInferRequest(model_name="m").SerializeToString(), 2))
    assert await _raw_answer(addresses["surge"], data) == (
        "13", "a message's compressed flag is 0 or 1, got 2", 0)


@both_stacks
async def test_a_stream_of_messages_just_under_the_cap_is_served(addresses: Addresses) -> None:
    """A DATA frame holding the end of one message and the start of the next: the stream's
    bytes held then exceed the cap, and its messages do not (each was refused as too large)."""
    body = b"".join(_message(_request(str(i), LIMIT - 100).SerializeToString())
                    for i in range(3))
    # Surge's stack allows frames of 1 MiB; grpc core's a client's peer must keep to 16 KiB.
    data = _raw_call(STREAM, body, frame=1 << 20)
    assert await _raw_answer(addresses["surge"], data) == ("0", "", 3)


@both_stacks
async def test_a_unary_call_cut_short_says_where(addresses: Addresses) -> None:
    """The client ends its half of the call before its message is whole (grpc core's server
    answers nothing until the deadline: only Surge's stack is asked)."""
    message = _message(pb.ModelInferRequest(model_name="m").SerializeToString())
    cases = {b"": "the call ended without a request message",
             message[:3]: "the call ended inside a message's 5-byte prefix (3 bytes)",
             message[:7]: f"the call ended inside its request message (2 of {len(message) - 5} "
                          "bytes)",
             message * 2: "a unary call carries one request message, this one more"}
    for body, said in cases.items():
        assert await _raw_answer(addresses["surge"], _raw_call(INFER, body)) == ("13", said, 0)

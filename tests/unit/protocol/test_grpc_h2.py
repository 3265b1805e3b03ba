"""Surge's own HTTP/2 gRPC listener against grpc core's client: calls, status, metadata,
deadlines, cancellation, flow control, limits and protocol errors."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.protocol.http2 import PREFACE, encode_headers, hpack_integer
from surge.server.grpc_calls import HeaderBlocks, Method, call_headers, parse_timeout
from surge.server.grpc_h2 import GrpcProtocol, ServerState
from surge.server.grpc_listener import start_grpc_h2_server
from surge.server.grpc_server import answered_as_completed
from surge.server.limits import ConnectionLimits
from tests.cli_runner import run_cli

pytestmark = pytest.mark.timeout(60)


class FakeServicer:
    """The RPCs the tests call, with what each saw."""

    def __init__(self) -> None:
        self.metadata: tuple[tuple[str, Any], ...] = ()
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.stream_reads = 0

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.metadata = context.invocation_metadata()
        context.set_trailing_metadata((("request-id", "rq-7"),))
        return pb.ModelInferResponse(model_name=request.model_name,
                                     raw_output_contents=list(request.raw_input_contents))

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} é not here",
                            (("request-id", "rq-9"),))

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise RuntimeError("a bug")

    async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:  # noqa: N802
        """Each request echoed as it arrives; a model named "boom" ends the call, one named
        "hold" stops the reading for 30 s ("pause": for 1 s)."""
        async for request in requests:
            self.stream_reads += 1
            if request.model_name == "boom":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "boom")
            if request.model_name in ("hold", "pause"):
                await asyncio.sleep(30 if request.model_name == "hold" else 1)
            yield pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(
                model_name=request.model_name, raw_output_contents=request.raw_input_contents))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def unused(request: Any, context: Any) -> Any:
            raise AssertionError(f"{name} is not called by these tests")
        return unused


Served = tuple[Any, FakeServicer, str]  # (server, servicer, host:port)


def served(body: Callable[[Served], Awaitable[None]]) -> Callable[[], None]:
    """A test running `body` against a fresh listener on its own event loop."""

    def test() -> None:
        async def main() -> None:
            servicer = FakeServicer()
            limits = ConnectionLimits(idle_timeout_s=0.5, header_timeout_s=0.5,
                                      body_timeout_s=0.5, max_connections=4, max_streams=8)
            server, _, port = await start_grpc_h2_server(
                None, "127.0.0.1", 0, servicer=servicer, limits=limits,
                max_message_bytes=4 << 20)
            try:
                await body((server, servicer, f"127.0.0.1:{port}"))
            finally:
                await server.stop(0.5)

        asyncio.run(main())

    test.__name__ = body.__name__
    return test


def _stub(channel: Any) -> Any:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@served
async def test_a_call_round_trips_large_messages_both_ways(served: Served) -> None:
    _, servicer, address = served
    blob = bytes(range(256)) * 12_000  # 3 MB: beyond every default window and frame size
    async with grpc.aio.insecure_channel(address) as channel:
        call = _stub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="m", raw_input_contents=[blob, b"x"]),
            metadata=(("authorization", "Bearer k"), ("trace-bin", b"\x00\xff")))
        response = await call
        trailing = await call.trailing_metadata()
    assert list(response.raw_output_contents) == [blob, b"x"]
    assert ("request-id", "rq-7") in list(trailing)
    assert ("authorization", "Bearer k") in servicer.metadata
    assert ("trace-bin", b"\x00\xff") in servicer.metadata


@served
async def test_many_concurrent_calls_on_one_connection(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        stub = _stub(channel)
        replies = await asyncio.gather(*(
            stub.ModelInfer(pb.ModelInferRequest(model_name=str(i))) for i in range(100)))
    assert [r.model_name for r in replies] == [str(i) for i in range(100)]


@served
async def test_gzip_compressed_request_is_decoded(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2], compression=grpc.Compression.Gzip) as channel:
        response = await _stub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="z", raw_input_contents=[b"a" * 100_000]))
    assert response.raw_output_contents[0] == b"a" * 100_000


@served
async def test_abort_gives_the_status_details_and_trailers(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _stub(channel).ModelReady(pb.ModelReadyRequest(name="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "model 'nope' é not here"
    assert ("request-id", "rq-9") in list(error.value.trailing_metadata())


@served
async def test_unexpected_error_is_internal(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _stub(channel).ServerReady(pb.ServerReadyRequest())
    assert error.value.code() == grpc.StatusCode.INTERNAL


@served
async def test_streaming_and_unknown_methods_are_unimplemented(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/StreamNope")()
        # The client keeps its side open, waiting for answers: the status comes at once.
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await asyncio.wait_for(stream.read(), 5)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        unknown = channel.unary_unary("/inference.GRPCInferenceService/Nope")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await unknown(b"")
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


@served
async def test_deadline_cancels_the_handler(served: Served) -> None:
    _, servicer, address = served
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _stub(channel).ServerLive(pb.ServerLiveRequest(), timeout=0.3)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(servicer.cancelled.wait(), 5)


@served
async def test_client_cancel_cancels_the_handler(served: Served) -> None:
    _, servicer, address = served
    async with grpc.aio.insecure_channel(address) as channel:
        call = _stub(channel).ServerLive(pb.ServerLiveRequest())
        await asyncio.wait_for(servicer.started.wait(), 5)
        call.cancel()
        await asyncio.wait_for(servicer.cancelled.wait(), 5)


@served
async def test_message_above_the_cap_is_resource_exhausted(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _stub(channel).ModelInfer(
                pb.ModelInferRequest(raw_input_contents=[b"x" * (5 << 20)]))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = await _stub(channel).ModelInfer(pb.ModelInferRequest(model_name="after"))
    assert ok.model_name == "after"


@served
async def test_drain_finishes_calls_in_progress_and_refuses_new_ones(served: Served) -> None:
    server, servicer, address = served

    async def slow_infer(request: Any, context: Any) -> Any:
        await asyncio.sleep(0.3)
        return pb.ModelInferResponse(model_name="finished")

    server.state.methods["/inference.GRPCInferenceService/ModelInfer"] = Method(
        slow_infer, pb.ModelInferRequest, False)
    async with grpc.aio.insecure_channel(address) as channel:
        call = _stub(channel).ModelInfer(pb.ModelInferRequest())
        await asyncio.sleep(0.1)
        await server.stop(5.0)
        assert (await call).model_name == "finished"
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _stub(channel).ModelInfer(pb.ModelInferRequest(), timeout=2)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each HTTP/2 frame in `data`."""
    frames, offset = [], 0
    while offset + 9 <= len(data):
        head, _, _ = struct.unpack_from(">IBI", data, offset)
        frames.append((head & 0xFF, data[offset + 9:offset + 9 + (head >> 8)]))
        offset += 9 + (head >> 8)
    return frames


async def _read_until_closed(reader: asyncio.StreamReader, wait_s: float) -> bytes:
    data = bytearray()
    async with asyncio.timeout(wait_s):
        while chunk := await reader.read(65536):
            data += chunk
    return bytes(data)


@served
async def test_not_http2_gets_goaway_and_close(served: Served) -> None:
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await _read_until_closed(reader, 5)
    writer.close()
    goaway = [payload for kind, payload in _frames(data) if kind == 7]
    assert [struct.unpack_from(">I", p, 4)[0] for p in goaway] == [1]  # PROTOCOL_ERROR


@served
async def test_silent_connections_are_closed_and_extras_refused(served: Served) -> None:
    host, port = served[2].split(":")
    connections = [await asyncio.open_connection(host, int(port)) for _ in range(6)]
    started = asyncio.get_running_loop().time()
    for reader, writer in connections:
        await _read_until_closed(reader, 5)  # the cap (4) at once, the others after 0.5 s
        writer.close()
    assert asyncio.get_running_loop().time() - started < 4


def _raw_call(stream_id: int, message: bytes, *, complete: bool = True,
              headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """HEADERS and DATA frames of a ModelInfer call (the DATA cut short unless complete)."""
    block = encode_headers([(b":method", b"POST"), (b":scheme", b"http"),
                            (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
                            (b"content-type", b"application/grpc"), *headers])
    body = struct.pack(">BI", 0, len(message)) + message
    if not complete:
        body = body[:len(body) // 2]
    chunks = [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]  # frames <= 1 MiB
    return (struct.pack(">IBI", len(block) << 8 | 1, 4, stream_id) + block
            + b"".join(struct.pack(">IBI", len(chunk) << 8 | 0,
                                   int(complete and i == len(chunks) - 1), stream_id) + chunk
                       for i, chunk in enumerate(chunks)))


_SETTINGS = PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # preface, empty SETTINGS


@served
async def test_idle_connection_is_closed_after_its_calls(served: Served) -> None:
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    message = pb.ModelInferRequest(model_name="raw").SerializeToString()
    writer.write(_SETTINGS + _raw_call(1, message))
    data = await _read_until_closed(reader, 5)  # answered, then closed as idle after 0.5 s
    writer.close()
    assert pb.ModelInferResponse(model_name="raw").SerializeToString() in data


@served
async def test_a_stalled_body_closes_the_connection_though_other_calls_finish(
        served: Served) -> None:
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    stalled = pb.ModelInferRequest(model_name="stalled").SerializeToString()
    message = pb.ModelInferRequest(model_name="whole").SerializeToString()
    writer.write(_SETTINGS + _raw_call(1, stalled, complete=False) + _raw_call(3, message))
    data = await _read_until_closed(reader, 5)  # the body timeout is 0.5 s
    writer.close()
    assert pb.ModelInferResponse(model_name="whole").SerializeToString() in data
    goaway = [payload for kind, payload in _frames(data) if kind == 7]
    assert [struct.unpack_from(">I", p, 4)[0] for p in goaway] == [0xB]  # ENHANCE_YOUR_CALM


def test_hpack_integers_and_literals_decode_with_hpack() -> None:
    for value in (0, 126, 127, 128, 300, 16_383, 2**20):
        assert hpack_integer(value, 7)[0] & 0x7F == min(value, 127)
    long_value = b"v" * 5_000
    block = encode_headers([(b"grpc-message", long_value), (b"x", b"")], status_200=True)
    assert hpack.Decoder().decode(block, raw=True) == [
        (b":status", b"200"), (b"grpc-message", long_value), (b"x", b"")]


@pytest.mark.parametrize(("text", "seconds"), [("100m", 0.1), ("5S", 5.0), ("2H", 7200.0),
                                                ("7u", 7e-6), ("", None), ("5", None),
                                                ("xS", None), ("5Q", None),
                                                ("\u00b2S", None), ("9" * 400 + "S", None),
                                                ("123456789S", None), ("12345678S", 12345678.0)])
def test_grpc_timeout_header(text: str, seconds: float | None) -> None:
    assert parse_timeout(text) == seconds



def test_serve_refuses_an_unknown_grpc_server_in_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["serve", "no-such-repo", "--grpc-server", "h3"], capsys)
    assert code == 2
    assert "--grpc-server 'h3': use surge or grpcio" in out + err
    assert len((out + err).strip().splitlines()) == 1


def test_repeated_header_blocks_decode_as_hpack_decodes_them() -> None:
    """Blocks kept decoded (all fields indexed) are dropped once the table changes: the same
    bytes then name other entries."""
    blocks = HeaderBlocks(1 << 16)
    reference, encoder = hpack.Decoder(), hpack.Encoder()

    def call(path: str) -> list[tuple[str, str]]:
        return [(":method", "POST"), (":path", path), ("content-type", "application/grpc"),
                ("authorization", f"Bearer {path}")]

    first, repeat = encoder.encode(call("/s/A")), encoder.encode(call("/s/A"))
    other = encoder.encode(call("/s/B"))  # new entries: every index moves
    assert min(repeat) >= 0x80
    assert min(other) < 0x80
    for block in (first, repeat, repeat, other, repeat, repeat):
        expected = call_headers(reference.decode(block))
        assert blocks.decode(block) == expected
    assert call_headers(reference.decode(repeat))[0] == "/s/B"  # the same bytes, moved on



def test_blocks_that_change_no_table_entry_are_decoded_once() -> None:
    """A repeated block of literals not indexed (what simple clients send on every call) is
    decoded once; one that names a table entry is decoded anew once the table changes (an
    entry added, a size update)."""
    blocks = HeaderBlocks(1 << 16)
    decoded: list[bytes] = []
    decode = blocks.decoder.decode
    blocks.decoder.decode = lambda block: decoded.append(block) or decode(block)  # type: ignore
    reference, encoder = hpack.Decoder(), hpack.Encoder()
    plain = encode_headers([(b":path", b"/s/A"), (b"content-type", b"application/grpc")])
    named = bytes([0x0F, 0x2F, 1]) + b"v"  # literal not indexed, named by dynamic entry 62
    resize = hpack_integer(4096, 5, 0x20) + plain
    for block in (plain, plain, encoder.encode([(":path", "/s/A"), ("x-a", "1")]), named,
                  named, encoder.encode([("x-b", "2")]), named, plain, plain, resize, plain):
        assert blocks.decode(block) == call_headers(reference.decode(block))
    assert decoded.count(plain) == 3  # the first time, and after the table changed
    assert decoded.count(named) == 2
    assert [name for name, _ in call_headers(reference.decode(named)).metadata] == ["x-b"]

@served
async def test_a_connection_holds_a_few_largest_messages_at_most(served: Served) -> None:
    """Requests that arrive slowly side by side: beyond 4 x the message cap, refused."""
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    message = pb.ModelInferRequest(raw_input_contents=[b"x" * 7_000_000]).SerializeToString()
    writer.write(_SETTINGS + b"".join(_raw_call(2 * i + 1, message, complete=False)
                                      for i in range(6)))  # 6 x 3.5 MB: over 4 x 4 MiB
    data = await _read_until_closed(reader, 5)  # then the body timeout closes it
    writer.close()
    refused = [payload for kind, payload in _frames(data) if kind == 3]  # RST_STREAM
    assert len(refused) == 2  # the first four fit in 16 MiB
    assert b"calls in progress hold more than 4 x" in data


class FakeTransport:
    def __init__(self) -> None:
        self.sent = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.sent += data

    def close(self) -> None:
        self.closing = True

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5) if name == "peername" else None


def test_a_connection_made_while_the_listener_drains_is_closed() -> None:
    """stop() closes the connections it finds; one made after it (accepted just before the
    listener closed) was kept, and outlived the event loop with its socket open."""
    async def main() -> None:
        state = ServerState({}, ConnectionLimits(), 1 << 16)
        open_one, late = FakeTransport(), FakeTransport()
        GrpcProtocol(state).connection_made(open_one)
        state.draining = True
        GrpcProtocol(state).connection_made(late)
        assert late.closing
        assert not late.sent
        assert not open_one.closing
        assert len(state.connections) == 1
        for connection in list(state.connections):
            connection.connection_lost(None)  # its timer stopped

    asyncio.run(main())


_FRAMES = st.lists(st.tuples(st.integers(0, 10), st.integers(0, 255), st.integers(0, 6),
                             st.binary(max_size=40)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(frames=_FRAMES, tail=st.binary(max_size=30))
def test_arbitrary_frames_never_raise_out_of_the_protocol(
        frames: list[tuple[int, int, int, bytes]], tail: bytes) -> None:
    """Whatever a client sends, the protocol answers, refuses or closes: it never raises."""
    servicer = FakeServicer()
    methods = {"/inference.GRPCInferenceService/ModelInfer":
               Method(servicer.ModelInfer, pb.ModelInferRequest, False)}

    async def main() -> None:
        connection = GrpcProtocol(ServerState(methods, ConnectionLimits(), 1 << 16))
        transport = FakeTransport()
        connection.connection_made(transport)
        opened = _raw_call(1, b"", complete=False)  # a call whose body the frames go on
        data = _SETTINGS + opened + b"".join(
            struct.pack(">IBI", len(p) << 8 | kind, flags, stream) + p
            for kind, flags, stream, p in frames) + tail
        for start in range(0, len(data), 97):  # in pieces, as a socket delivers them
            connection.data_received(data[start:start + 97])
        await asyncio.sleep(0.01)  # the calls completed run
        connection.connection_lost(None)

    asyncio.run(main())


@served
async def test_a_stream_answers_each_request_while_the_client_still_sends(
        served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        call = _stub(channel).ModelStreamInfer()
        for i in range(3):  # each answer read before the next request is written
            await call.write(pb.ModelInferRequest(model_name=str(i), raw_input_contents=[b"x"]))
            answer = await asyncio.wait_for(call.read(), 5)
            assert answer.infer_response.model_name == str(i)
        blob = b"y" * 3_000_000  # past the windows, both ways
        await call.write(pb.ModelInferRequest(model_name="big", raw_input_contents=[blob]))
        assert (await call.read()).infer_response.raw_output_contents == [blob]
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


@served
async def test_a_stream_ends_with_the_status_its_handler_gives(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        call = _stub(channel).ModelStreamInfer()
        await call.write(pb.ModelInferRequest(model_name="a"))
        assert (await call.read()).infer_response.model_name == "a"
        await call.write(pb.ModelInferRequest(model_name="boom"))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await asyncio.wait_for(call.read(), 5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@served
async def test_an_idle_open_stream_is_not_cut_by_the_body_timeout(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        call = _stub(channel).ModelStreamInfer()
        await call.write(pb.ModelInferRequest(model_name="a"))
        await call.read()
        await asyncio.sleep(1.2)  # body and idle timeouts are 0.5 s here
        await call.write(pb.ModelInferRequest(model_name="b"))
        assert (await asyncio.wait_for(call.read(), 5)).infer_response.model_name == "b"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


def test_stream_answers_come_as_they_complete_within_the_limit() -> None:
    running, most, cancelled = 0, 0, []

    async def answer(delay: float) -> float:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            cancelled.append(delay)
            raise
        finally:
            running -= 1
        return delay

    async def requests(delays: list[float]) -> AsyncIterator[float]:
        for delay in delays:
            yield delay

    async def main() -> tuple[list[float], int, list[float]]:
        whole = [a async for a in answered_as_completed(requests([0.3, 0.0, 0.1, 0.05]),
                                                        answer, limit=2)]
        at_once = most
        early = answered_as_completed(requests([5.0, 0.0, 5.0]), answer)
        first = [await anext(early)]
        await early.aclose()  # the client went away: the answers still running stop
        await asyncio.sleep(0)
        return whole, at_once, first

    whole, at_once, first = asyncio.run(main())
    assert whole == [0.0, 0.1, 0.05, 0.3]  # 0.05 waited for the slot 0.1 held (limit 2)
    assert at_once == 2
    assert first == [0.0]
    assert sorted(cancelled) == [5.0, 5.0]


@served
async def test_a_bad_call_header_refuses_that_call_not_the_connection(served: Served) -> None:
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    calls = [(b"x-trace-bin", b"a"), (b"grpc-timeout", b"9" * 400 + b"S"),
             (b"grpc-timeout", "\u00b2S".encode()), (b"x-plain", b"fine")]
    writer.write(_SETTINGS + b"".join(
        _raw_call(2 * i + 1, pb.ModelInferRequest(model_name=f"call{i}").SerializeToString(),
                  headers=(header,)) for i, header in enumerate(calls)))
    data = await _read_until_closed(reader, 5)  # answered, then closed as idle after 0.5 s
    writer.close()
    assert b"metadata 'x-trace-bin' is not base64" in data
    answered = [i for i in range(4)
                if pb.ModelInferResponse(model_name=f"call{i}").SerializeToString() in data]
    assert answered == [1, 2, 3]
    goaway = [payload for kind, payload in _frames(data) if kind == 7]
    assert [struct.unpack_from(">I", p, 4)[0] for p in goaway] == [0]  # NO_ERROR: idle


@served
async def test_a_compressed_message_may_not_expand_past_the_cap(served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2], compression=grpc.Compression.Gzip) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:  # 5 MiB in about 5 KB of gzip
            await _stub(channel).ModelInfer(
                pb.ModelInferRequest(raw_input_contents=[bytes(5 << 20)]))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "decompressed" in (error.value.details() or "")
        ok = await _stub(channel).ModelInfer(pb.ModelInferRequest(model_name="after"))
    assert ok.model_name == "after"


@served
async def test_a_message_that_is_not_the_request_type_is_invalid_argument(
        served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await raw(b"\xff\xff\xff\xff")
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot parse the ModelInferRequest" in (error.value.details() or "")
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")()
        await stream.write(pb.ModelInferRequest(model_name="a").SerializeToString())
        assert pb.ModelStreamInferResponse.FromString(await stream.read()).infer_response \
            .model_name == "a"
        await stream.write(b"\xff\xff\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await asyncio.wait_for(stream.read(), 5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stream_whose_request_cannot_be_read_answers_those_read_before_it() -> None:
    async def answer(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    async def requests() -> AsyncIterator[float]:
        yield 0.2
        yield 0.1
        raise ValueError("a malformed message")

    async def main() -> tuple[list[float], str]:
        answered: list[float] = []
        try:
            async for a in answered_as_completed(requests(), answer):
                answered.append(a)
        except ValueError as exc:
            return answered, str(exc)
        return answered, ""

    assert asyncio.run(main()) == ([0.1, 0.2], "a malformed message")


def _raw_stream(messages: list[bytes]) -> bytes:
    """HEADERS of a ModelStreamInfer call on stream 1, and DATA frames (<= 1 MiB) carrying
    `messages`, the call left open; whatever the windows say."""
    block = encode_headers([(b":method", b"POST"), (b":scheme", b"http"),
                            (b":path", b"/inference.GRPCInferenceService/ModelStreamInfer"),
                            (b"content-type", b"application/grpc")])
    body = b"".join(struct.pack(">BI", 0, len(m)) + m for m in messages)
    chunks = [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]
    return (struct.pack(">IBI", len(block) << 8 | 1, 4, 1) + block
            + b"".join(struct.pack(">IBI", len(c) << 8, 0, 1) + c for c in chunks))


def _stream_requests(model: str, count: int, size: int) -> list[bytes]:
    return [pb.ModelInferRequest(model_name=model, raw_input_contents=[b"x" * size])
            .SerializeToString() for _ in range(count)]


async def _read_while_writing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              data: bytes, wait_s: float) -> bytes:
    """What the server sends until it closes, read while `data` goes out (a server that
    closes with our bytes unread resets the connection, which would lose what it sent)."""
    received = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(read())
    writer.write(data)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        await writer.drain()
    async with asyncio.timeout(wait_s):
        await reading
    writer.close()
    return bytes(received)


def _window_updates(data: bytes) -> dict[int, int]:
    """Stream id -> the credit the server's WINDOW_UPDATE frames gave it (0: the connection)."""
    credit: dict[int, int] = {}
    offset = 0
    while offset + 9 <= len(data):
        head, _, stream_id = struct.unpack_from(">IBI", data, offset)
        if head & 0xFF == 8:
            credit[stream_id] = credit.get(stream_id, 0) + struct.unpack_from(
                ">I", data, offset + 9)[0]
        offset += 9 + (head >> 8)
    return credit


@served
async def test_a_streaming_call_whose_handler_is_behind_gets_no_more_credit(
        served: Served) -> None:
    """Its requests wait unread: the stream's window is no longer given back, and a client
    sending past it breaks the protocol (before, every byte was credited as it arrived, so a
    client could fill the server's memory through one call)."""
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    flood = _stream_requests("hold", 1, 0) + _stream_requests("m", 300, 64 * 1024)  # 19 MiB
    data = await _read_while_writing(reader, writer, _SETTINGS + _raw_stream(flood), 10)
    credit = _window_updates(data)
    assert credit.get(0, 0) >= 8 << 20  # the connection's window is still given back
    assert 1 not in credit  # the stream's is not
    goaway = [payload for kind, payload in _frames(data) if kind == 7]
    assert goaway
    assert struct.unpack(">I", goaway[0][4:8])[0] == 3  # FLOW_CONTROL_ERROR
    assert b"past stream 1's window" in goaway[0]
    assert served[1].stream_reads == 1


@served
async def test_a_streaming_call_whose_client_does_not_read_stops_its_handler(
        served: Served) -> None:
    """The client's window for answers is 0: the handler stops once 4 MiB of answers wait,
    and so stops reading requests (before, it echoed all 100 into memory)."""
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    no_window = PREFACE + struct.pack(">IBI", 6 << 8 | 4, 0, 0) + struct.pack(">HI", 4, 0)
    writer.write(no_window + _raw_stream(_stream_requests("m", 100, 100 * 1024)))  # 10 MiB
    await asyncio.sleep(1.5)
    writer.close()
    assert 30 <= served[1].stream_reads <= 60


@served
async def test_a_streaming_call_held_back_goes_on_once_its_handler_reads(
        served: Served) -> None:
    """30 MiB through one call whose handler pauses at first: the credit kept back is given
    once it reads again, and every request is answered."""
    async with grpc.aio.insecure_channel(served[2]) as channel:
        messages = [pb.ModelInferRequest(model_name="pause")] + [
            pb.ModelInferRequest(model_name=str(i), raw_input_contents=[b"y" * (100 << 10)])
            for i in range(300)]
        answers = [a async for a in _stub(channel).ModelStreamInfer(iter(messages))]
    assert [a.infer_response.model_name for a in answers][-1] == "299"
    assert len(answers) == 301


def test_answers_not_taken_stop_the_reading_of_requests() -> None:
    """A caller that takes answers slowly (its client does not read them) has at most `limit`
    requests read ahead; before, a slot was freed once an answer was computed, and every
    request was read."""
    read = 0

    async def requests() -> AsyncIterator[int]:
        nonlocal read
        for i in range(100):
            read += 1
            yield i

    async def answer(i: int) -> int:
        return i

    async def main() -> int:
        answers = answered_as_completed(requests(), answer, limit=4)
        first = await anext(answers)
        await asyncio.sleep(0.1)
        await answers.aclose()
        return first

    assert asyncio.run(main()) == 0
    assert read <= 6


_INFER_PATH = [(":method", "POST"), (":scheme", "http"),
               (":path", "/inference.GRPCInferenceService/ModelInfer"),
               (":authority", "x"), ("content-type", "application/grpc")]


def _header_frames(stream_id: int, block: bytes, *, end_stream: bool = True) -> bytes:
    """`block` as a HEADERS frame and CONTINUATIONs of 16 KiB."""
    pieces = [block[i:i + 16_384] for i in range(0, len(block), 16_384)] or [b""]
    last = len(pieces) - 1
    return b"".join(
        struct.pack(">IBI", len(piece) << 8 | (1 if i == 0 else 9),
                    (1 if end_stream and i == 0 else 0) | (4 if i == last else 0), stream_id)
        + piece for i, piece in enumerate(pieces))


def _answers_by_stream(data: bytes) -> dict[int, list[tuple[str, str]]]:
    """Stream id -> the fields of every HEADERS frame the server sent on it."""
    fields: dict[int, list[tuple[str, str]]] = {}
    offset = 0
    while offset + 9 <= len(data):
        head, _, stream_id = struct.unpack_from(">IBI", data, offset)
        if head & 0xFF == 1:
            block = data[offset + 9:offset + 9 + (head >> 8)]
            fields.setdefault(stream_id, []).extend(hpack.Decoder().decode(block))
        offset += 9 + (head >> 8)
    return fields


@served
async def test_oversized_metadata_refuses_that_call_and_the_connection_goes_on(
        served: Served) -> None:
    """A block of 100 KiB metadata, in CONTINUATIONs: its call is RESOURCE_EXHAUSTED, and the
    next call on the connection, whose block refers to a table entry the big one added,
    succeeds (before, the whole connection got GOAWAY)."""
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    encoder = hpack.Encoder()  # indexes what it sends, as grpc core's does
    fields = [*_INFER_PATH, ("x-big", "a" * 100_000), ("x-tag", "kept")]
    big = encoder.encode(fields, huffman=False)
    small = encoder.encode([*_INFER_PATH, ("x-tag", "kept")])
    assert len(small) < 60  # x-tag refers to the entry the big block added
    message = pb.ModelInferRequest(model_name="after").SerializeToString()
    data_frame = struct.pack(">IBI", (5 + len(message)) << 8, 1, 3) + struct.pack(
        ">BI", 0, len(message)) + message
    writer.write(_SETTINGS + _header_frames(1, big)
                 + _header_frames(3, small, end_stream=False) + data_frame)
    data = await _read_until_closed(reader, 5)  # answered, then closed as idle after 0.5 s
    writer.close()
    refused = dict(_answers_by_stream(data)[1])
    assert refused["grpc-status"] == "8"
    size = sum(len(name) + len(value) + 32 for name, value in fields)
    assert refused["grpc-message"] == (
        f"request headers of {size} bytes exceed the limit of 65536 bytes "
        "(SETTINGS_MAX_HEADER_LIST_SIZE)")
    assert pb.ModelInferResponse(model_name="after").SerializeToString() in data
    assert ("x-tag", "kept") in served[1].metadata
    goaway = [payload for kind, payload in _frames(data) if kind == 7]
    assert [struct.unpack_from(">I", p, 4)[0] for p in goaway] == [0]  # NO_ERROR: idle


def _bomb_block() -> bytes:
    """A 4 KB entry added to the table, then named again and again: 12 KB that decode to
    about 48 MB."""
    entry = hpack.Encoder().encode([("x-bomb", "b" * 4000)], huffman=False)
    return hpack.Encoder().encode(_INFER_PATH) + entry + bytes([0x80 | 62]) * 12_000


@pytest.mark.parametrize(("block", "reason"), [
    (hpack.Encoder().encode([*_INFER_PATH, ("x-big", "a" * 300_000)], huffman=False),
     b"header block over 262144 bytes"),
    (_bomb_block(), b"header list over 262144 bytes"),
], ids=["encoded", "decoded"])
def test_a_header_block_past_the_hard_limit_ends_the_connection(
        block: bytes, reason: bytes) -> None:
    """Past 256 KiB, encoded or decoded, a block is not decoded to its end and the HPACK table
    is lost: GOAWAY ENHANCE_YOUR_CALM naming the limit (before: COMPRESSION_ERROR once the
    block decoded past 64 KiB, however long it was)."""

    @served
    async def body(served: Served) -> None:
        host, port = served[2].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(_SETTINGS + struct.pack(">IBI", len(block) << 8 | 1, 5, 1) + block)
        data = await _read_until_closed(reader, 5)
        writer.close()
        goaway = [payload for kind, payload in _frames(data) if kind == 7]
        assert [struct.unpack_from(">I", p, 4)[0] for p in goaway] == [0xB]
        assert reason in goaway[0]

    body()


@served
async def test_grpcio_call_with_100_kib_metadata_is_refused_and_the_channel_goes_on(
        served: Served) -> None:
    async with grpc.aio.insecure_channel(served[2]) as channel:
        stub = _stub(channel)
        await stub.ModelInfer(pb.ModelInferRequest(model_name="first"))
        big = stub.ModelInfer(pb.ModelInferRequest(model_name="big"),
                              metadata=(("x-big", "a" * 100 * 1024),))
        beside = stub.ModelInfer(pb.ModelInferRequest(model_name="beside"))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await big
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceed the limit of 65536 bytes" in (error.value.details() or "")
        assert (await beside).model_name == "beside"
        after = await stub.ModelInfer(pb.ModelInferRequest(model_name="after"))
    assert after.model_name == "after"


@served
async def test_oversized_trailers_from_the_client_refuse_that_call(served: Served) -> None:
    host, port = served[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    encoder = hpack.Encoder()
    message = pb.ModelInferRequest(model_name="t").SerializeToString()
    data_frame = struct.pack(">IBI", (5 + len(message)) << 8, 0, 1) + struct.pack(
        ">BI", 0, len(message)) + message
    trailers = encoder.encode([("x-big", "a" * 100_000)], huffman=False)
    writer.write(_SETTINGS + _header_frames(1, encoder.encode(_INFER_PATH), end_stream=False)
                 + data_frame + _header_frames(1, trailers) + _raw_call(3, message))
    data = await _read_until_closed(reader, 5)
    writer.close()
    assert dict(_answers_by_stream(data)[1])["grpc-status"] == "8"
    assert pb.ModelInferResponse(model_name="t").SerializeToString() in data  # call 3's
    goaway = [payload for kind, payload in _frames(data) if kind == 7]
    assert [struct.unpack_from(">I", p, 4)[0] for p in goaway] == [0]  # NO_ERROR: idle

"""The load generator's own HTTP/2 gRPC client against grpc core's server (grpc.aio) and
against Surge's listener: outcomes, flow control both ways, many calls on few connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from surge.bench.grpc_client import LeanGrpcTransport
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.server.grpc_listener import start_grpc_h2_server
from surge.server.limits import ConnectionLimits

pytestmark = pytest.mark.timeout(60)


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """Echoes the raw inputs; a model named "full" is refused, "slow" answers after 0.2 s."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.seen.append((request.model_name, dict(context.invocation_metadata())
                          .get("authorization", "")))
        if request.model_name == "full":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if request.model_name == "slow":
            await asyncio.sleep(0.2)
        return pb.ModelInferResponse(model_name=request.model_name,
                                     raw_output_contents=list(request.raw_input_contents))


async def _grpcio_server(servicer: Servicer) -> tuple[Any, int]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _surge_server(servicer: Servicer) -> tuple[Any, int]:
    server, _, port = await start_grpc_h2_server(None, "127.0.0.1", 0, servicer=servicer,
                                                 limits=ConnectionLimits())
    return server, port


Start = Callable[[Servicer], Awaitable[tuple[Any, int]]]
SERVERS = pytest.mark.parametrize("start", [_grpcio_server, _surge_server],
                                  ids=["grpcio", "surge"])


def _request(model: str, blob: bytes = b"") -> bytes:
    return pb.ModelInferRequest(model_name=model, raw_input_contents=[blob]).SerializeToString()


def _run(start: Start, body: Callable[[LeanGrpcTransport, Servicer], Awaitable[None]],
         connections: int = 1) -> Servicer:
    servicer = Servicer()

    async def main() -> None:
        server, port = await start(servicer)
        transport = LeanGrpcTransport("127.0.0.1", port, connections,
                                      (("authorization", "Bearer k"),))
        try:
            await body(transport, servicer)
        finally:
            await transport.close()
            await server.stop(0.5)

    asyncio.run(main())
    return servicer


@SERVERS
def test_calls_and_their_outcomes(start: Start) -> None:
    async def body(transport: LeanGrpcTransport, servicer: Servicer) -> None:
        outcomes = await asyncio.gather(*(transport.send(_request(m))
                                          for m in ("a", "full", "slow", "b")))
        assert outcomes == ["ok", "RESOURCE_EXHAUSTED", "ok", "ok"]

    servicer = _run(start, body)
    assert sorted(servicer.seen) == [(m, "Bearer k") for m in ("a", "b", "full", "slow")]


@SERVERS
def test_large_messages_both_ways_and_many_calls_on_two_connections(start: Start) -> None:
    blob = bytes(range(256)) * 8_000  # 2 MB: past grpc core's and HTTP/2's default windows

    async def body(transport: LeanGrpcTransport, servicer: Servicer) -> None:
        big = await asyncio.gather(*(transport.send(_request("big", blob)) for _ in range(4)))
        small = await asyncio.gather(*(transport.send(_request(str(i))) for i in range(300)))
        assert big == ["ok"] * 4
        assert small == ["ok"] * 300

    servicer = _run(start, body, connections=2)
    assert len(servicer.seen) == 304


def test_a_closed_port_is_a_connect_outcome() -> None:
    async def main() -> str:
        transport = LeanGrpcTransport("127.0.0.1", 1, 1)
        try:
            return await transport.send(_request("m"))
        finally:
            await transport.close()

    assert asyncio.run(main()) == "connect"


def test_a_server_that_goes_away_fails_the_calls_and_a_new_connection_follows() -> None:
    async def body(transport: LeanGrpcTransport, servicer: Servicer) -> None:
        assert await transport.send(_request("a")) == "ok"
        opened = transport._connections[0]
        assert opened is not None
        connection = opened.result()
        slow = asyncio.ensure_future(transport.send(_request("slow")))
        await asyncio.sleep(0.05)
        assert connection.transport is not None
        connection.transport.abort()
        assert await slow == "connection"
        assert await transport.send(_request("b")) == "ok"  # on a new connection
        assert transport._connections[0] is not opened

    _run(_surge_server, body)

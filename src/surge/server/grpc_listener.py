"""The gRPC listener on Surge's own HTTP/2 (surge/server/grpc_h2.py): starts it on the event
loop, and on stop refuses new calls, lets those in progress finish and closes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from surge.errors import cannot_listen
from surge.protocol.http2 import NO_ERROR
from surge.server.grpc_calls import service_methods
from surge.server.grpc_h2 import GrpcProtocol, ServerState
from surge.server.limits import ConnectionLimits
from surge.server.sockets import close_listener


class GrpcH2Server:
    """The listener; `stop(grace)` refuses new calls, lets calls in progress finish, closes."""

    def __init__(self, server: asyncio.base_events.Server, state: ServerState) -> None:
        self.server = server
        self.state = state

    async def stop(self, grace: float | None) -> None:
        self.state.draining = True
        await close_listener(self.server)
        connections = list(self.state.connections)
        for connection in connections:
            connection.drained = asyncio.Event()
            connection._goaway(NO_ERROR, "")
        waits = [c.drained.wait() for c in connections if c.drained is not None]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), grace)
        for connection in connections:
            if connection.transport is not None:
                connection.transport.abort()


async def start_grpc_h2_server(
    engine: Any, host: str, port: int, api_key: str | None = None, *,
    limits: ConnectionLimits | None = None, max_message_bytes: int = 64 * 1024 * 1024,
    reuse_port: bool = False, servicer: Any = None, ssl_context: Any = None,
    sock: socket.socket | None = None,
) -> tuple[GrpcH2Server, Any, int]:
    """Serve gRPC on host:port (0 = any free port), or on `sock` (bound, `surge.server.sockets.
    reserve`); returns (server, servicer, port)."""
    from surge.server.grpc_server import InferenceServicer

    servicer = servicer or InferenceServicer(engine, api_key)
    state = ServerState(service_methods(servicer), limits or ConnectionLimits(), max_message_bytes)
    loop = asyncio.get_running_loop()
    # The TLS handshake gets the header timeout too (asyncio's default is 60 s): GrpcProtocol
    # arms its own deadline only once the handshake is done.
    tls: dict[str, Any] = ({"ssl": ssl_context,
                            "ssl_handshake_timeout": state.limits.header_timeout_s}
                           if ssl_context is not None else {})
    try:
        if sock is not None:
            server = await loop.create_server(lambda: GrpcProtocol(state), sock=sock,
                                              backlog=2048, **tls)
        else:
            server = await loop.create_server(lambda: GrpcProtocol(state), host, port,
                                              reuse_port=reuse_port or None, **tls)
    except OSError as exc:
        raise cannot_listen(host, port, exc) from None
    bound = server.sockets[0].getsockname()[1]
    return GrpcH2Server(server, state), servicer, bound

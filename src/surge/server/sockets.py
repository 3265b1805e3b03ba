"""The ports a server listens on, bound before anything loads."""

from __future__ import annotations

import socket

from surge.errors import cannot_listen


def reserve(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound to host:port that does not listen yet: a port another program holds is
    refused at once, not after the models have loaded, and port 0 is chosen here. Until
    something listens on it (asyncio's and uvloop's `create_server(sock=...)` do), connections
    to it are refused, not queued."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as create_server sets it
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise cannot_listen(host, port, exc) from None
    sock.setblocking(False)
    return sock


def reserve_all(host: str, ports: tuple[int, ...], *,
                reuse_port: bool = False) -> list[socket.socket]:
    """`reserve` for each port, all or none."""
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            sockets.append(reserve(host, port, reuse_port=reuse_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets

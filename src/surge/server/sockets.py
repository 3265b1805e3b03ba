"""The ports a server listens on, bound before anything loads, and ports to name before a
server that cannot report what it bound has started."""

from __future__ import annotations

import asyncio
import random
import socket
from asyncio.selector_events import BaseSelectorEventLoop
from pathlib import Path

from surge.errors import cannot_listen

LOWEST_UNUSED = 20000  # Ray's workers take 10002-19999 by default
_handed_out: set[int] = set()


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


async def close_listener(listener: asyncio.Server) -> None:
    """`listener.close()`, after the connections it has accepted have their transports.

    On asyncio's own loop (Python 3.11), a connection accepted in the loop's turn before
    close() got its transport after it: attaching it to the closed server failed, that error
    was swallowed and the connection's socket was never closed. Accepting stops first here;
    a few turns of the loop later the accepted connections are made, and close() follows.
    uvloop's listeners accept and make a connection in one step."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, BaseSelectorEventLoop) and listener.is_serving():
        for sock in listener.sockets:
            loop.remove_reader(sock.fileno())
        for _ in range(_TURNS_TO_MAKE_A_CONNECTION):
            await asyncio.sleep(0)
    listener.close()


# accept -> the connection's task starts and builds its transport -> connection_made
_TURNS_TO_MAKE_A_CONNECTION = 3


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


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(int(low), int(high) + 1)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def unused_port() -> int:
    """A port nothing listens on, for a server that must be told its port before it starts (a
    torch rendezvous, a Ray head, another framework's server): drawn from below the kernel's
    ephemeral range, so that no socket the system numbers itself (client connections, Ray's
    workers) can take it between this choice and the server's bind, and never handed out twice
    by this process. A server that can report what it bound (`surge serve --endpoints-file`)
    takes port 0 instead."""
    ephemeral = _ephemeral_range()
    ports = [p for p in range(LOWEST_UNUSED, 32768) if p not in ephemeral and p not in _handed_out]
    random.shuffle(ports)  # other processes choose too
    for port in ports:
        if _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {LOWEST_UNUSED}-32767 outside the ephemeral range")

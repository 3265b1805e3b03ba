"""surge.server.sockets: ports reserved before models load, and ports named before a server
that cannot report its own has started."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import warnings
from typing import Any

import pytest

from surge.errors import SurgeError
from surge.server import sockets


def test_unused_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets, "_ephemeral_range", lambda: range(20010, 61000))
    monkeypatch.setattr(sockets, "_handed_out", set())
    ports = [sockets.unused_port() for _ in range(10)]
    assert sorted(ports) == list(range(20000, 20010))


def test_an_unused_port_is_one_nothing_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets, "_ephemeral_range", lambda: range(20002, 61000))
    monkeypatch.setattr(sockets, "_handed_out", set())
    held = socket.socket()
    try:
        held.bind(("", 20000))
    except OSError:
        pytest.skip("port 20000 is in use on this machine")
    with held:
        assert sockets.unused_port() == 20001
        with pytest.raises(RuntimeError, match="no free port"):
            sockets.unused_port()


def test_a_port_in_use_is_one_line_naming_it() -> None:
    first = sockets.reserve("127.0.0.1", 0)
    with first:
        first.listen()
        port = first.getsockname()[1]
        with pytest.raises(SurgeError, match=f"cannot listen on 127.0.0.1:{port}"):
            sockets.reserve("127.0.0.1", port)


def test_a_host_that_does_not_resolve_says_why() -> None:
    with pytest.raises(SurgeError, match=r"cannot listen on 999\.1\.1\.1:0 \(") as error:
        sockets.reserve("999.1.1.1", 0)
    assert "Unknown error" not in str(error.value)  # strerror of getaddrinfo's negative code


class _Closes(asyncio.Protocol):
    """A server's connection that is closed as soon as it is made."""

    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).made += 1
        transport.close()


async def _accepted_as_the_listener_closes(close: Any) -> int:
    """Connections the loop accepts in the turn before `close(listener)` runs (their
    transports are built in the turns after): how many reached their protocol."""
    _Closes.made = 0
    listener = await asyncio.get_running_loop().create_server(_Closes, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        await asyncio.sleep(0)  # this turn: the loop sees the listener readable and accepts
        await asyncio.sleep(0)  # the next: this coroutine runs before the connections' tasks
        await close(listener)
        await asyncio.sleep(0.05)
        return _Closes.made
    finally:
        for client in clients:
            client.close()


def test_connections_accepted_as_a_listener_closes_are_made_and_closed() -> None:
    """On Python 3.11's own loop, they failed to attach to the closed server and their sockets
    stayed open (a ResourceWarning, or a descriptor held, for each)."""
    async def plain(listener: asyncio.Server) -> None:
        listener.close()

    assert asyncio.run(_accepted_as_the_listener_closes(sockets.close_listener)) == 5
    if sys.version_info < (3, 12):  # what close_listener guards against is still there
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            assert asyncio.run(_accepted_as_the_listener_closes(plain)) < 5
            gc.collect()

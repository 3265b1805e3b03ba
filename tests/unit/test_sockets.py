"""surge.server.sockets: ports reserved before models load, and ports named before a server
that cannot report its own has started."""

from __future__ import annotations

import socket

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

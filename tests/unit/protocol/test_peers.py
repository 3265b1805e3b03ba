"""Peers as gRPC and ASGI give them, and the user of a loopback client read from the socket
tables (`surge.server.peers`); which objects a registration may map (`check_owner`)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from surge.server.peers import client_uid, http_peer, is_local, peer_address
from surge.server.shared_memory import ForeignObjectError, check_owner

TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:D431 0100007F:1F40 06 00000000:00000000 00:00000000 00000000     0        0 0 1
   2: 0100007F:D431 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 2 1
"""
TABLE6 = (  # [::1]:40960 -> [::1]:8000, established, uid 4242
    "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt uid\n"
    "   0: 00000000000000000000000001000000:A000 00000000000000000000000001000000:1F40"
    " 01 00000000:00000000 00:00000000 00000000  4242        0 3 1\n")


@pytest.mark.parametrize(("peer", "expected"), [
    ("ipv4:127.0.0.1:54321", ("127.0.0.1", 54321)),
    ("ipv6:[::1]:80", ("::1", 80)),
    ("ipv6:%5B::1%5D:80", ("::1", 80)),
    ("ipv6:::1:80", ("::1", 80)),  # Surge's own gRPC listener writes no brackets
    ("ipv6:[::ffff:127.0.0.1]:80", ("127.0.0.1", 80)),  # an IPv4 client of a dual-stack socket
    ("127.0.0.1", ("127.0.0.1", None)),
    ("unix:/run/surge.sock", None),
    ("example.com", None),
])
def test_peer_addresses(peer: str, expected: tuple[str, int | None] | None) -> None:
    address = peer_address(peer)
    if expected is None:
        assert address is None
    else:
        assert address == (ipaddress.ip_address(expected[0]), expected[1])


def test_asgi_clients_are_written_as_grpc_peers() -> None:
    assert http_peer(("127.0.0.1", 5)) == "ipv4:127.0.0.1:5"
    assert http_peer(("::1", 5)) == "ipv6:[::1]:5"
    assert http_peer(None) == ""
    assert is_local(http_peer(("::ffff:127.0.0.2", 5)))
    assert not is_local(http_peer(("10.0.0.1", 5)))


@pytest.fixture
def tables(tmp_path: Path) -> list[Path]:
    (tmp_path / "tcp").write_text(TABLE)
    (tmp_path / "tcp6").write_text(TABLE6)
    return [tmp_path / "tcp", tmp_path / "tcp6", tmp_path / "missing"]


def test_the_established_socket_of_the_clients_address_gives_its_user(tables: list[Path]) -> None:
    # port 0xD431 = 54321: the TIME_WAIT line (uid 0) before it is not the client's socket
    assert client_uid("ipv4:127.0.0.1:54321", tables) == 1000
    assert client_uid("ipv6:[::ffff:127.0.0.1]:54321", tables) == 1000
    assert client_uid("ipv6:[::1]:40960", tables) == 4242
    assert client_uid("ipv4:127.0.0.1:8000", tables) is None  # the listening socket
    assert client_uid("ipv4:127.0.0.1:1", tables) is None
    assert client_uid("ipv4:10.0.0.1:54321", tables) is None  # not a loopback client
    assert client_uid("unix:/run/s", tables) is None


@pytest.fixture
def connection() -> Iterator[tuple[str, int]]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, address = listener.accept()
            with accepted:
                yield address


def test_a_real_loopback_client_is_found_in_this_machines_tables(
        connection: tuple[str, int]) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this system")
    assert client_uid(http_peer(connection)) == os.geteuid()


def test_only_the_clients_own_objects_are_mapped() -> None:
    check_owner("/k", owner=1000, client=1000)
    check_owner("/k", owner=1000, client=0)  # root reads every object anyway
    with pytest.raises(ForeignObjectError, match=r"'/k' belongs to uid 0, not to the "
                       r"registering client's user \(uid 1000\)") as refused:
        check_owner("/k", owner=0, client=1000)
    assert refused.value.status == 403
    check_owner("/k", owner=os.geteuid(), client=None)  # unknown: the server's own user's
    with pytest.raises(ForeignObjectError, match="not to the server's user"):
        check_owner("/k", owner=os.geteuid() + 1, client=None)

"""Who a client is, from its address: whether it is on this machine, and which user's process
holds its end of a loopback connection.

A peer is written as gRPC writes it (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`, the brackets
sometimes escaped as `%5B`/`%5D`, `unix:/path`); `http_peer` writes an ASGI client the same way.
The user of a loopback client is read from Linux's socket tables (`/proc/net/tcp` and `tcp6`,
which list every socket of this network namespace with its owner's uid): the client's end of
the connection is the established socket whose local address is the peer's address.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SOCKET_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_ESTABLISHED = "01"


def http_peer(client: Sequence[object] | None) -> str:
    """An ASGI `client` (host, port) as a gRPC-style peer; "" when there is none."""
    if not client:
        return ""
    host, port = str(client[0]), client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def peer_address(peer: str) -> tuple[IpAddress, int | None] | None:
    """The IP address (IPv4 for an IPv4 client of a dual-stack socket) and the port of a
    peer; None for a unix socket or anything that is no address."""
    family, _, rest = peer.partition(":")
    if family in ("ipv4", "ipv6"):
        host, _, port = rest.replace("%5B", "[").replace("%5D", "]").rpartition(":")
        if not host.strip("[]"):  # no port: the whole rest is the host
            host, port = rest, ""
    else:
        host, port = peer, ""
    try:
        address = _plain(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None
    return address, int(port) if port.isdigit() else None


def is_local(peer: str) -> bool:
    """Whether the peer is on this machine: a unix socket or a loopback address."""
    if peer.partition(":")[0] in ("unix", "unix-abstract"):
        return True
    address = peer_address(peer)
    return address is not None and address[0].is_loopback


def client_uid(peer: str, tables: Sequence[Path] = SOCKET_TABLES) -> int | None:
    """The uid of the process that holds the client's end of a loopback TCP connection;
    None when it cannot be known (a unix socket, no port, no such socket, no /proc)."""
    address = peer_address(peer)
    if address is None or address[1] is None or not address[0].is_loopback:
        return None
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[3] == _ESTABLISHED and \
                    _socket_address(fields[1]) == address:
                return int(fields[7])
    return None


def _socket_address(text: str) -> tuple[IpAddress, int] | None:
    """`0100007F:D431` (each 32-bit word of the address in host byte order) as (address,
    port)."""
    hex_host, _, hex_port = text.partition(":")
    try:
        raw = bytes.fromhex(hex_host)
        if sys.byteorder == "little":
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        return _plain(ipaddress.ip_address(raw)), int(hex_port, 16)
    except ValueError:
        return None


def _plain(address: IpAddress) -> IpAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


__all__ = ["client_uid", "http_peer", "is_local", "peer_address"]

"""Ports for test servers that must be named before the server starts (a torch rendezvous, a
Ray head): drawn from below the kernel's ephemeral range, so that no socket the system numbers
itself (Ray's workers, client connections) can take one between the choice and the bind.
Servers that can report what they bound (`surge serve --endpoints-file`) take port 0 instead."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000  # Ray's workers take 10002-19999 by default
_handed_out: set[int] = set()


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(int(low), int(high) + 1)


def _candidates() -> list[int]:
    ephemeral = _ephemeral_range()
    ports = [p for p in range(LOWEST, 32768) if p not in ephemeral and p not in _handed_out]
    random.shuffle(ports)  # other test processes choose too
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range, never handed out twice here."""
    for port in _candidates():
        if _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {LOWEST}-32767 outside the ephemeral range")

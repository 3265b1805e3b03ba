"""Connection limits: defaults follow the descriptor limit, gRPC gets the same limits."""

from __future__ import annotations

import resource

import pytest

from surge.server.limits import ConnectionLimits, default_max_connections


def test_default_cap_is_a_quarter_of_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert default_max_connections() == 256
    monkeypatch.setattr(resource, "getrlimit", lambda _: (10**6, 10**6))
    assert default_max_connections() == 4096
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY,) * 2)
    assert default_max_connections() == 4096


def test_grpc_gets_the_same_limits() -> None:
    limits = ConnectionLimits(idle_timeout_s=2.5, header_timeout_s=0.5, max_connections=7,
                              max_streams=3)
    assert dict(limits.grpc_options()) == {
        "grpc.max_connection_idle_ms": 2500, "grpc.server_handshake_timeout_ms": 500,
        "grpc.max_allowed_incoming_connections": 7, "grpc.max_concurrent_streams": 3}


@pytest.mark.parametrize("bad", [{"idle_timeout_s": 0}, {"body_timeout_s": -1},
                                 {"max_connections": 0}, {"max_streams": 0}])
def test_nonsense_limits_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        ConnectionLimits(**bad)

"""Joining a Ray cluster refuses what cannot work in seconds, without a cluster: a port out of
range, a port where no gRPC server (a GCS) answers; the driver outlives a lost GCS and leaves
without waiting on it for ever."""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from surge.cluster.connect import ClusterError, check_address

connect = importlib.import_module("surge.cluster.connect")  # the package exports a function

SETTINGS_FRAME = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def serving(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback server that answers each connection with `answer`; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                if not stop.is_set():
                    answer(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def grpc_like(conn: socket.socket) -> None:
    conn.recv(64)
    conn.sendall(SETTINGS_FRAME)


def http1(conn: socket.socket) -> None:
    conn.recv(64)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def silent(conn: socket.socket) -> None:
    time.sleep(2.0)


@pytest.fixture
def gcs() -> Iterator[int]:
    yield from serving(grpc_like)


def test_a_grpc_server_passes(gcs: int) -> None:
    check_address(f"127.0.0.1:{gcs}")


def test_a_port_out_of_range_is_refused_not_wrapped(gcs: int) -> None:
    # The resolver would take 65536 + port as port: the cluster there would be joined.
    with pytest.raises(ClusterError, match=r"port \d+ is not in 1-65535"):
        check_address(f"127.0.0.1:{gcs + 65536}")


@pytest.mark.parametrize("answer", [http1, silent])
def test_a_port_where_no_gcs_answers_is_refused_at_once(
        answer: Callable[[socket.socket], None], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connect, "PROBE_TIMEOUT_S", 0.5)
    for port in serving(answer):
        started = time.monotonic()
        with pytest.raises(ClusterError, match="does not answer as a Ray cluster's GCS"):
            check_address(f"127.0.0.1:{port}")
        assert time.monotonic() - started < 2.0  # Ray's own client waits 13-40 s


def test_the_driver_outlives_a_lost_gcs_unless_told_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = "RAY_gcs_rpc_server_reconnect_timeout_s"
    monkeypatch.delenv(name, raising=False)
    connect.driver_environment()
    assert int(os.environ[name]) > 365 * 86400  # Ray's default ends the driver after 60 s
    monkeypatch.setenv(name, "60")
    connect.driver_environment()
    assert os.environ[name] == "60"


def test_leaving_does_not_wait_for_ever_on_a_gcs_that_is_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    calls: list[Any] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda *args: (calls.append(args), time.sleep(3.0)))
    started = time.monotonic()
    connect.disconnect(timeout_s=0.2)
    assert time.monotonic() - started < 2.0  # not the 3 s of the stuck shutdown
    assert calls == [()]


def test_auto_without_a_cluster_on_this_machine_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import services

    def none_found(address: str) -> str:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", none_found)
    with pytest.raises(ClusterError, match="--ray auto: no Ray cluster runs on this machine"):
        connect.find_cluster()


@pytest.mark.parametrize("mode", ["tokn", "k8s"])
def test_an_auth_mode_ray_does_not_know_is_named(monkeypatch: pytest.MonkeyPatch,
                                                 mode: str) -> None:
    """Ray takes an unknown RAY_AUTH_MODE for 'disabled' and joins without the token: a
    token cluster then refused it as a wrong token ('set RAY_AUTH_TOKEN'), the token set."""
    pytest.importorskip("ray")
    from surge.cluster.connect import check_token_present

    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "surge-test-" + "0" * 21)
    with pytest.raises(ClusterError, match=f"RAY_AUTH_MODE '{mode}' is not a mode Ray knows "
                                           r"\(token or disabled\)"):
        check_token_present()


def test_an_empty_auth_mode_with_a_token_means_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from surge.cluster.connect import driver_environment

    environment = {"RAY_AUTH_MODE": "", "RAY_AUTH_TOKEN": "surge-test-" + "0" * 21}
    monkeypatch.setattr(os, "environ", environment)
    driver_environment()
    assert environment["RAY_AUTH_MODE"] == "token"

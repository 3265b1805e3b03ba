"""`surge serve --frontends 2` with explicit model control: a load or unload that reaches one
front end is done by every front end, and a front end restarted after a crash serves what the
others serve."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, worker_pids
from tests.integration.server.test_frontends import (
    CONNECTIONS,
    _wait_for,
    connection_owners,
    two_frontends,
)

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

OVERRIDE = {"parameters": {"config": {"instances": 2}}}  # config.yaml has 1


@pytest.fixture(scope="module")
def served(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    yield from two_frontends(tiny_repo, tmp_path_factory.mktemp("frontends-control"))


def _on_every_front_end(server: ServerProcess, ask: Callable[[httpx.Client], Any]) -> list[Any]:
    """`ask`'s answers over CONNECTIONS connections held open together, which reach every
    front end (checked)."""
    pids = worker_pids(server.process)
    with ExitStack() as stack:
        answers = [ask(stack.enter_context(httpx.Client(base_url=server.http, timeout=60)))
                   for _ in range(CONNECTIONS)]
        assert set(connection_owners(int(server.http.rsplit(":", 1)[1]), pids)) == set(pids)
    return answers


def _ready(client: httpx.Client) -> int:
    return client.get("/v2/models/tiny/ready").status_code


def _instances(client: httpx.Client) -> int:
    return int(client.get("/v2/models/tiny/config").json()["instance_group"][0]["count"])


def _index_state(client: httpx.Client) -> str:
    rows = client.post("/v2/repository/index", json={}).json()
    return ",".join(row["state"] for row in rows if row["name"] == "tiny")


def test_http_load_and_unload_reach_every_front_end(served: ServerProcess) -> None:
    answer = httpx.post(f"{served.http}/v2/repository/models/tiny/unload", timeout=60)
    assert answer.status_code == 200, answer.text
    # Answered once every front end has unloaded: no wait before asking.
    assert set(_on_every_front_end(served, _ready)) == {503}
    assert set(_on_every_front_end(served, _index_state)) == {"UNAVAILABLE"}
    answer = httpx.post(f"{served.http}/v2/repository/models/tiny/load", json=OVERRIDE,
                        timeout=60)
    assert answer.status_code == 200, answer.text
    assert set(_on_every_front_end(served, _ready)) == {200}
    assert set(_on_every_front_end(served, _instances)) == {2}
    assert set(_on_every_front_end(served, _index_state)) == {"READY"}


def test_grpc_load_and_unload_reach_every_front_end(served: ServerProcess) -> None:
    with grpc.insecure_channel(served.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny"),
                                   timeout=60)
        assert set(_on_every_front_end(served, _ready)) == {503}
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"), timeout=60)
    assert set(_on_every_front_end(served, _ready)) == {200}
    assert set(_on_every_front_end(served, _instances)) == {1}  # config.yaml's again


def _replace_one(server: ServerProcess) -> int:
    """Kill a front end; the supervisor's replacement's pid once it serves."""
    victim, survivor = worker_pids(server.process)
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: len(worker_pids(server.process)) == 2
              and victim not in worker_pids(server.process))
    replacement = (set(worker_pids(server.process)) - {survivor}).pop()
    _wait_for(lambda: _reaches(server, replacement))
    return replacement


def _reaches(server: ServerProcess, pid: int) -> bool:
    """Whether some of CONNECTIONS connections held open together land on front end `pid`."""
    with ExitStack() as stack:
        for _ in range(CONNECTIONS):
            stack.enter_context(httpx.Client(base_url=server.http, timeout=10)).get(
                "/v2/health/live")
        return pid in connection_owners(int(server.http.rsplit(":", 1)[1]), [pid])


def test_a_restarted_front_end_serves_what_the_others_serve(served: ServerProcess) -> None:
    answer = httpx.post(f"{served.http}/v2/repository/models/tiny/unload", timeout=60)
    assert answer.status_code == 200, answer.text
    _replace_one(served)
    assert set(_on_every_front_end(served, _ready)) == {503}  # not loaded from its options
    answer = httpx.post(f"{served.http}/v2/repository/models/tiny/load", json=OVERRIDE,
                        timeout=60)
    assert answer.status_code == 200, answer.text
    _replace_one(served)
    assert set(_on_every_front_end(served, _instances)) == {2}  # the override, not config.yaml

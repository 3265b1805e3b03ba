"""`surge serve --frontends 2`: the front ends agree on what they serve and let go of what a
client gave up, whichever front end a change reached."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from multiprocessing import shared_memory
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.integration.server.conftest import ServerProcess, worker_pids
from tests.integration.server.test_frontends import (
    CONNECTIONS,
    SHM_BODY,
    _wait_for,
    connection_owners,
    two_frontends,
)

LOAD_TWO = {"parameters": {"config": {"instances": 2}}}  # config.yaml has 1


@pytest.fixture(scope="module")
def served(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    yield from two_frontends(tiny_repo, tmp_path_factory.mktemp("frontends-consistency"))


def _port(server: ServerProcess) -> int:
    return int(server.http.rsplit(":", 1)[1])


def _owner(server: ServerProcess, client: httpx.Client) -> int:
    """The front end holding `client`'s one connection (opened by a request)."""
    assert client.get("/v2/health/live").status_code == 200
    owners = connection_owners(_port(server), worker_pids(server.process))
    assert len(owners) == 1, owners
    return next(iter(owners))


def _answers(server: ServerProcess, path: str) -> dict[int, set[str]]:
    """Per front end, the answers (status and body) to GET `path` over CONNECTIONS connections
    held open together, which reach every front end (checked)."""
    pids = worker_pids(server.process)
    by_pid: dict[int, set[str]] = {pid: set() for pid in pids}
    with ExitStack() as stack:
        for _ in range(CONNECTIONS):
            client = stack.enter_context(httpx.Client(base_url=server.http, timeout=60))
            owner = _owner_of_new(server, client, by_pid)
            answer = client.get(path)
            by_pid[owner].add(f"{answer.status_code} {answer.text}")
    assert all(by_pid.values()), by_pid
    return by_pid


def _owner_of_new(server: ServerProcess, client: httpx.Client,
                  known: dict[int, set[str]]) -> int:
    """The front end of `client`'s connection, the one new among those held open."""
    before = connection_owners(_port(server), list(known))
    assert client.get("/v2/health/live").status_code == 200
    after = connection_owners(_port(server), list(known))
    (owner,) = [pid for pid in known if after[pid] > before[pid]]
    return owner


def _limit_open_files(pid: int, extra: int) -> str:
    """Let front end `pid` open only `extra` more files; its soft limit before."""
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    soft = next(line.split()[3] for line in limits if line.startswith("Max open files"))
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={len(os.listdir(f'/proc/{pid}/fd')) + extra}:"],
                   check=True)
    return soft


def test_a_load_another_front_end_cannot_do_is_a_400_and_the_same_everywhere_after(
        served: ServerProcess) -> None:
    """A front end out of files failed the load the other did: the answer was 200, and each
    front end went on serving its own config (1 instance on one, 2 on the other)."""
    with httpx.Client(base_url=served.http, timeout=200) as client:
        receiver = _owner(served, client)
        (victim,) = set(worker_pids(served.process)) - {receiver}
        soft = _limit_open_files(victim, extra=3)  # reads the record; starts no worker
        try:
            answer = client.post("/v2/repository/models/tiny/load", json=LOAD_TWO)
        finally:
            subprocess.run(["prlimit", f"--pid={victim}", f"--nofile={soft}:"], check=True)
        assert answer.status_code == 400, answer.text
        assert f"failed on front end pid {victim}: " in answer.json()["error"]
    config = _answers(served, "/v2/models/tiny/config")
    assert all(text.startswith("200 ") and '"count":2' in text for text in config[receiver])
    # the failed one serves no older config beside the new: unavailable, and says why
    assert all(text.startswith("404 ") and "is not loaded: " in text for text in config[victim])
    # loading again tries every front end again
    answer = httpx.post(f"{served.http}/v2/repository/models/tiny/load", timeout=200)
    assert answer.status_code == 200, answer.text
    ready = _answers(served, "/v2/models/tiny/ready")
    assert {text.split()[0] for texts in ready.values() for text in texts} == {"200"}


def _maps(pid: int, key: str) -> bool:
    return key.lstrip("/") in Path(f"/proc/{pid}/maps").read_text()


def test_a_region_unregistered_through_one_front_end_is_unmapped_by_every_other(
        served: ServerProcess) -> None:
    """The front ends that mapped a region for a request kept it mapped after its unregister
    through another front end, until their own next shared-memory call: the client's object,
    removed, kept its memory there."""
    pids = worker_pids(served.process)
    block = shared_memory.SharedMemory(create=True, size=16)
    key = "/" + block.name.lstrip("/")
    try:
        block.buf[:16] = np.array([1, 2, 3, 4], np.float32).tobytes()
        registered = httpx.post(f"{served.http}/v2/systemsharedmemory/region/in/register",
                                json={"key": key, "offset": 0, "byte_size": 16}, timeout=30)
        assert registered.status_code == 200, registered.text
        with ExitStack() as stack:  # a request naming the region on every front end
            for _ in range(CONNECTIONS):
                client = stack.enter_context(httpx.Client(base_url=served.http, timeout=30))
                answer = client.post("/v2/models/tiny/infer", json=SHM_BODY)
                assert answer.status_code == 200, answer.text
            assert set(connection_owners(_port(served), pids)) == set(pids)
        assert all(_maps(pid, key) for pid in pids)
        with httpx.Client(base_url=served.http, timeout=30) as client:
            unregistered_by = _owner(served, client)
            assert client.post("/v2/systemsharedmemory/region/in/unregister").status_code == 200
    finally:
        block.close()
        block.unlink()
    assert not _maps(unregistered_by, key)
    # No other call reaches the others: they let go by themselves.
    deadline = time.monotonic() + 60  # a bound on the wait, not a timing assertion
    while any(_maps(pid, key) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in pids if _maps(pid, key)] == []


def _segments_of(pid: int) -> list[str]:
    """The workers' tensor segments front end `pid` made (surge/workers/transport.py)."""
    return [path.name for path in Path("/dev/shm").glob(f"surge-{pid}-*")]


def test_a_killed_front_ends_worker_segments_are_removed(served: ServerProcess) -> None:
    """A front end killed outright could not remove its workers' shared-memory segments, and
    the resource tracker that would is the supervisor's: they held their memory until the
    whole server stopped, again at every kill."""
    victim, survivor = worker_pids(served.process)
    assert _segments_of(victim)
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: len(worker_pids(served.process)) == 2
              and victim not in worker_pids(served.process))
    assert _segments_of(victim) == []  # removed before its replacement started
    assert _segments_of(survivor)
    answer = httpx.get(f"{served.http}/v2/models/tiny/ready", timeout=30)
    assert answer.status_code == 200, answer.text

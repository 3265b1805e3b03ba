"""Draining on SIGTERM: requests that reach the server as a drain begins are answered, and a
drain that begins while models still load does not wait for them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.integration.server.conftest import HERE, worker_pids
from tests.integration.server.models import make_repository, write_slow_to_load

from surge.api import start_server
from surge.engine import Engine
from surge.errors import SurgeError
from surge.repository import Repository
from surge.server.app import CUT_OFF_AT_GRACE
from surge.server.process import ServeOptions, SurgeServer

pytestmark = pytest.mark.timeout(120)

INFER = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], '
         b'"data": [1, 2, 3, 4]}, {"name": "n", "datatype": "INT64", "shape": [1, 3], '
         b'"data": [1, 2, 3]}]}')


def _post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _response(reader: asyncio.StreamReader) -> bytes:
    """One whole response (its body chunked, or of a given length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
               if line.lower().startswith(b"content-length:")]
    if lengths:
        return head + await reader.readexactly(lengths[0])
    return head + await reader.readuntil(b"\r\n0\r\n\r\n")


def test_a_request_reaching_an_idle_keep_alive_connection_as_the_drain_begins_is_answered(
        tmp_path: Path) -> None:
    """It was cut off without an answer: uvicorn closes idle keep-alive connections at once
    (about 1 request in 1,000 of clients that kept sending through a SIGTERM)."""
    repo = make_repository(tmp_path / "repo", with_slow=False)

    async def body() -> None:
        server = SurgeServer(Engine(Repository(repo)),
                             ServeOptions(http_port=0, grpc_port=0, metrics_port=0))
        endpoints = await server.start()
        host, port = endpoints.http.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(_post("/v2/models/tiny/infer", INFER))
        assert (await _response(reader)).startswith(b"HTTP/1.1 200")  # now idle, kept alive
        drain = asyncio.create_task(server.drain())
        http = server._http
        assert http is not None
        while any(listener.is_serving() for listener in http.servers):
            await asyncio.sleep(0.001)  # the drain has begun: no new connections
        writer.write(_post("/v2/models/tiny/infer", INFER))
        answer = await asyncio.wait_for(reader.read(), 10.0)
        await drain
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"server is shutting down" in answer
        assert b"connection: close" in answer.lower()
        writer.close()
        await writer.wait_closed()

    asyncio.run(body())


def _repository_with_a_minute_long_load(root: Path) -> Path:
    return write_slow_to_load(make_repository(root, with_slow=False), 60)


def test_sigterm_while_models_load_stops_the_server_without_waiting_for_them(
        tmp_path: Path) -> None:
    """SIGTERM was taken only once every model had loaded (a minute here)."""
    repo = _repository_with_a_minute_long_load(tmp_path / "repo")
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(HERE)))
    try:
        deadline = time.monotonic() + 60
        while not worker_pids(process):  # the worker is loading the model
            assert time.monotonic() < deadline
            assert process.poll() is None
            time.sleep(0.2)
        workers = worker_pids(process)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert time.monotonic() - sent < 20  # not the 60 s load
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()



def test_a_background_server_that_does_not_start_in_time_stops_without_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`surge.start_server` giving up after its timeout waited for the loads to finish."""
    repo = _repository_with_a_minute_long_load(tmp_path / "repo")
    monkeypatch.syspath_prepend(str(HERE))  # the workers import models:slow_to_load
    began = time.monotonic()
    with pytest.raises(SurgeError, match="did not start within 3 s"):
        start_server(repo, ServeOptions(http_port=0, grpc_port=0, metrics_port=0), timeout_s=3)
    assert time.monotonic() - began < 20


def test_a_connection_still_answering_when_the_grace_ends_is_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn gives up on the request as its grace ends: it was answered 500 with a
    traceback in the log, and a connection still open then outlived the event loop."""
    repo = make_repository(tmp_path / "repo", slow_delay_ms=3000, with_tiny=False)
    monkeypatch.syspath_prepend(str(HERE))  # the workers import models:slow_double
    slow = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}'

    async def body() -> None:
        server = SurgeServer(Engine(Repository(repo)), ServeOptions(
            http_port=0, grpc_port=0, metrics_port=0, grace_s=1.0))
        endpoints = await server.start()
        host, port = endpoints.http.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(_post("/v2/models/slow/infer", slow))
        await asyncio.sleep(0.5)  # being computed
        drain = asyncio.create_task(server.drain())
        answer = await asyncio.wait_for(reader.read(), 10.0)  # to the end: it closes
        await drain
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": CUT_OFF_AT_GRACE}
        assert b"connection: close" in answer.lower()
        writer.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(body())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

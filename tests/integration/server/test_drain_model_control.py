"""A load request still waiting on its model when a drain's grace ends is answered, over HTTP
and both gRPC stacks: 503 / UNAVAILABLE saying the server is stopping and the load was
abandoned, no traceback, and the load's workers stopped."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc
import httpx
import pytest
from tests.integration.server.conftest import HERE
from tests.integration.server.models import make_repository, write_slow_to_load

from surge.engine import Engine
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.repository import Repository
from surge.server.process import ServeOptions, SurgeServer

pytestmark = pytest.mark.timeout(120)

ABANDONED = ("server is stopping: the load of model 'late' did not finish within the shutdown "
             "grace and was abandoned; send it again once the server is back")


def _children() -> set[int]:
    pid = os.getpid()
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def _loading(engine: Engine, name: str) -> None:
    while not [r for r in engine.index() if r["name"] == name and r["state"] == "LOADING"]:
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stack", ["surge", "grpcio"])
def test_a_load_past_the_grace_is_answered_503_and_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        stack: str) -> None:
    """The listener cancelled it as its grace ended: HTTP 500 'Internal Server Error' with a
    traceback in the log, gRPC UNAVAILABLE 'Stream removed' or 'Cancelling all calls'."""
    repo = write_slow_to_load(make_repository(tmp_path / "repo", with_slow=False), 60)
    monkeypatch.syspath_prepend(str(HERE))  # the workers import models:slow_to_load

    async def body() -> None:
        engine = Engine(Repository(repo), models=["tiny"])
        server = SurgeServer(engine, ServeOptions(http_port=0, grpc_port=0, metrics_port=0,
                                                  grace_s=1.0, grpc_server=stack))
        endpoints = await server.start()
        before = _children()
        channel = grpc.aio.insecure_channel(endpoints.grpc)
        async with httpx.AsyncClient(timeout=60) as client:
            http = asyncio.ensure_future(
                client.post(f"{endpoints.http}/v2/repository/models/late/load"))
            rpc = asyncio.ensure_future(pb_grpc.GRPCInferenceServiceStub(channel)
                                        .RepositoryModelLoad(pb.RepositoryModelLoadRequest(
                                            model_name="late")))
            await _loading(engine, "late")
            await server.drain()
            answer = await http
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"error": ABANDONED}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.UNAVAILABLE, ABANDONED)
        await channel.close()
        assert not _children() - before  # the load's workers are stopped

    with caplog.at_level(logging.ERROR):
        asyncio.run(body())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

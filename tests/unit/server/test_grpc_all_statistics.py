"""gRPC ModelStatistics without a name lists every ready version once, as HTTP's
`GET /v2/models/stats` does."""

from __future__ import annotations

import asyncio
from pathlib import Path

from surge.engine import Engine
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.repository import Repository
from surge.server.grpc_server import InferenceServicer
from tests.unit.engine.fakes import FakeClock, FakePools, make_repo


def test_every_served_version_is_listed_once(tmp_path: Path) -> None:
    """The newest version was listed once per served version, the others never."""
    make_repo(tmp_path, "version_policy: {all: true}\n", versions=(1, 2))

    async def scenario() -> None:
        engine = Engine(Repository(tmp_path), pool_factory=FakePools(), clock=FakeClock())
        await engine.start()
        try:
            servicer = InferenceServicer(engine)
            answer = await servicer.ModelStatistics(pb.ModelStatisticsRequest(), None)
            assert [(s.name, s.version) for s in answer.model_stats] == [("m", "1"), ("m", "2")]
        finally:
            await engine.stop(0.0)

    asyncio.run(scenario())

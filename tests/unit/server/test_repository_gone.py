"""The repository folder moved, removed or unmounted under a running server: requests that list
the models (the index, the statistics, a load) are answered 503 naming the cause, not 500 with
an OSError's traceback, and the models loaded keep serving."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from surge.engine.reload import RepositoryPoller
from surge.server.app import V2App
from tests.unit.engine.fakes import serving

GONE = ("the model repository cannot be read (No such file or directory): it was moved, "
        "removed or unmounted; the models loaded keep serving")


async def _post(app: V2App, path: str) -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send)
    body = sent[1]["body"]
    return sent[0]["status"], orjson.loads(body) if body else None


def test_a_repository_gone_is_answered_503_and_the_loaded_models_serve(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "repo", "instances: 1\n") as served:
            app = V2App(served.engine)
            (tmp_path / "repo").rename(tmp_path / "moved")
            assert await _post(app, "/v2/repository/index") == (503, {"error": GONE})
            status, body = await _post(app, "/v2/repository/models/m/load")
            assert (status, body) == (400, {"error": f"failed to load: {GONE}"})
            [answer] = await served.infer(1.0)
            await served.tick(1.0)  # past the batching delay: dispatched
            served.pool.finish()
            await served.tick()
            assert (await answer)["y"].tolist() == [[3.0] * 4]  # still served
            (tmp_path / "moved").rename(tmp_path / "repo")
            status, body = await _post(app, "/v2/repository/index")
            assert (status, [(r["name"], r["state"]) for r in body]) == (200, [("m", "READY")])

    asyncio.run(scenario())


def test_a_poll_of_a_repository_gone_logs_one_line_and_unloads_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each poll logged 'repository poll failed' with an OSError's traceback."""
    async def scenario() -> None:
        async with serving(tmp_path / "repo", "instances: 1\n") as served:
            poller = RepositoryPoller(served.engine, served.engine.repository, 5.0)
            poller.snapshot()
            (tmp_path / "repo").rename(tmp_path / "moved")
            with caplog.at_level(logging.WARNING, logger="surge.engine.reload"):
                await poller.poll_logged()
            assert [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records] == [
                ("WARNING", f"repository poll: {GONE}; looking again in 5 s", None)]
            assert served.engine.model_ready("m")

    asyncio.run(scenario())

"""A serving process takes what starting made out of the garbage collector's reach."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from typing import Any

import pytest

from surge.server import process


class StartedServer:
    """Stands in for SurgeServer: starts at once, drains at once."""

    def __init__(self, engine: Any, options: Any) -> None:
        self.drained = False

    async def start(self) -> str:
        return "endpoints"

    def reload_files(self) -> None:
        pass

    async def drain(self) -> None:
        self.drained = True


def test_serving_freezes_the_heap_loading_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "SurgeServer", StartedServer)
    gc.unfreeze()
    frozen: list[int] = []

    def on_started(endpoints: Any) -> None:
        frozen.append(gc.get_freeze_count())
        os.kill(os.getpid(), signal.SIGTERM)  # serve_until_signal's own handler: drain

    try:
        asyncio.run(process.serve_until_signal(None, process.ServeOptions(),  # type: ignore[arg-type]
                                               on_started))
    finally:
        gc.unfreeze()
    assert frozen
    assert frozen[0] > 0

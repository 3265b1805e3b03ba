"""Loads and unloads shared by front ends through a directory (surge/server/model_control.py)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from surge.errors import SurgeError
from surge.server.model_control import SharedControl


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...] | tuple[str, str, Any]] = []

    async def load(self, name: str, config: Any = None) -> None:
        if name == "bad":
            raise SurgeError("does not load")
        self.calls.append(("load", name, config))

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))


def _control(directory: Path, pid: int, wait_s: float = 10.0) -> tuple[SharedControl, FakeEngine]:
    engine = FakeEngine()
    return SharedControl(engine, directory, wait_s=wait_s, pid=pid), engine  # type: ignore[arg-type]


def test_a_change_is_done_by_the_other_front_end_before_the_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, engine_a = _control(tmp_path, os.getpid())
        b, engine_b = _control(tmp_path, os.getppid())  # a live process: b is waited for
        await a.start()
        await b.start()
        await a.load("m", {"instances": 2})
        assert engine_a.calls == engine_b.calls == [("load", "m", {"instances": 2})]
        await b.unload("m")
        assert engine_a.calls[-1] == engine_b.calls[-1] == ("unload", "m")
        assert len(engine_a.calls) == len(engine_b.calls) == 2  # each change done once
        await a.stop()
        await b.stop()

    asyncio.run(scenario())


def test_a_front_end_started_later_does_every_recorded_change_before_it_listens(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        a, _ = _control(tmp_path, os.getpid())
        await a.start()
        await a.load("m", {"instances": 2})
        await a.unload("n")
        await a.load("n", None)
        restarted, engine = _control(tmp_path, os.getppid())
        await restarted.start()
        assert sorted(engine.calls, key=str) == [("load", "m", {"instances": 2}),
                                                 ("load", "n", None)]
        await restarted.stop()
        await a.stop()

    asyncio.run(scenario())


def test_a_failed_load_is_answered_and_not_followed(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, _ = _control(tmp_path, os.getpid())
        await a.start()
        with pytest.raises(SurgeError, match="does not load"):
            await a.load("bad", None)
        b, engine_b = _control(tmp_path, os.getppid())
        await b.start()
        assert engine_b.calls == []
        await a.stop()
        await b.stop()

    asyncio.run(scenario())


def test_the_wait_for_a_front_end_that_does_not_follow_is_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, engine = _control(tmp_path, os.getpid(), wait_s=0.3)
        stuck, _ = _control(tmp_path, os.getppid())
        await stuck.start()
        await stuck.stop()  # its notes gone: not waited for
        (tmp_path / "done" / f"{os.getppid()}.json").write_text("{}")  # alive, never follows
        await a.start()
        started = time.monotonic()
        await a.unload("m")
        assert 0.3 <= time.monotonic() - started < 5
        assert engine.calls == [("unload", "m")]
        await a.stop()

    asyncio.run(scenario())

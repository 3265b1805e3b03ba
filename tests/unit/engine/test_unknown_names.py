"""Loads of names the repository does not hold leave nothing behind in the engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from surge.engine import Engine
from surge.errors import NotFoundError
from surge.repository import Repository
from tests.unit.engine.fakes import FakeClock, FakePools, make_repo


def test_loads_of_made_up_names_do_not_grow_the_engine(tmp_path: Path) -> None:
    async def body() -> None:
        make_repo(tmp_path, "max_batch_size: 4\n")
        engine = Engine(Repository(tmp_path), pool_factory=FakePools(), clock=FakeClock())
        await engine.start()
        try:
            for i in range(50):
                with pytest.raises(NotFoundError, match="is not in the repository"):
                    await engine.load(f"made-up-{i}")
            assert [e["name"] for e in engine.index()] == ["m"]
            assert not [n for n in (*engine._state, *engine._locks) if n.startswith("made-up")]
        finally:
            await engine.stop()

    asyncio.run(body())

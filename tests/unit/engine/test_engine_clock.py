"""The engine's clock resolves below a millisecond on the event loop `surge serve` runs on:
uvloop's `loop.time()` ticks in whole milliseconds, read once per turn of the loop, so queue
waits, batch times and the event loop's own lag (all of a millisecond or two) read 0 or 1 ms."""

from __future__ import annotations

import time
from pathlib import Path

import uvloop

from surge.engine import Engine
from surge.repository import Repository


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_the_engine_clock_advances_within_one_turn_of_uvloop(tmp_path: Path) -> None:
    async def advance() -> list[float]:
        clock = Engine(Repository(tmp_path)).clock
        steps = []
        for _ in range(5):  # within one callback: uvloop's loop.time() would not move
            before = clock()
            _spin(0.0003)
            steps.append(clock() - before)
        return steps

    steps = uvloop.run(advance())
    assert all(0.0002 < step < 0.5 for step in steps), steps

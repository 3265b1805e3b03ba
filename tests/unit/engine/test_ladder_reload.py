"""A reload of a laddered model under a surge goes on where the ladder stood: same rungs, same
shares and rate windows; other rungs start fresh from the top."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from surge.engine.reload import RepositoryPoller
from tests.unit.engine.fakes import FakePool
from tests.unit.engine.test_ladder_serving import (
    LADDER,
    TIMES,
    Ladder,
    add_variant,
    laddered,
    overload,
    run,
    rung_of,
)


async def reloaded(s: Ladder, load: Awaitable[Any]) -> None:
    """Run `load`, answering the new rungs' load-time probes (and any batch) meanwhile."""
    loading = asyncio.ensure_future(load)
    for _ in range(1000):
        if loading.done():
            break
        s.finish_all()
        await asyncio.sleep(0.001)
    await loading


def newest(s: Ladder, rung: str) -> FakePool:
    return [p for p in s.pools.built if rung_of(p) == rung][-1]


async def first_requests_after(s: Ladder, load: Awaitable[Any]) -> tuple[int, int]:
    """Reload during a surge, then send one wave: items (original, fast) the new rungs took."""
    await overload(s, waves=20, per_wave=80)
    assert s.served.controller.level == 1.0
    old = s.served
    await reloaded(s, load)
    assert s.served is not old
    before = {r: len(newest(s, r).dispatched) for r in ("original", "fast")}  # the probes
    tasks = [await s.infer(float(i)) for i in range(20)]
    await s.drain()
    assert all(t.done() for t in tasks)
    original, fast = (sum(b.size for b in newest(s, r).dispatched[before[r]:])
                      for r in ("original", "fast"))
    return original, fast


def test_an_explicit_reload_under_a_surge_keeps_the_ladders_shares(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            old_rate = s.served._rate
            # Before: the new ladder started at the top rung and the original took all 20.
            assert await first_requests_after(s, s.engine.load("m")) == (0, 20)
            assert s.served.controller.level == 1.0
            assert s.served._rate is old_rate  # the surge's arrivals, not an empty window
            gauge = s.engine.metrics.ladder_share.labels("m", "fast")._value.get()
            assert gauge == 1.0

    run(body())


def test_a_reload_with_a_config_override_keeps_the_ladders_shares(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            load = s.engine.load("m", {"slo_p99_ms": 40})
            assert await first_requests_after(s, load) == (0, 20)
            assert s.served.config.slo_p99_ms == 40

    run(body())


def test_a_polled_reload_of_changed_files_keeps_the_ladders_shares(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            poller = RepositoryPoller(s.engine, s.engine.repository, 1.0)
            poller.snapshot()
            weights = tmp_path / "m" / "variants" / "fast" / "model.onnx"
            weights.write_bytes(b"new weights")

            async def poll_twice() -> None:
                await poller.poll()
                assert await poller.poll() == ["m"]  # settled for an interval: reloaded

            old = s.served.controller
            assert await first_requests_after(s, poll_twice()) == (0, 20)
            # `fast` loads other files: its settled batch times are its new probe's, while the
            # original's, taken before the surge, still describe the original.
            settled = s.served.controller._settled
            assert settled["original"] is old._settled["original"]
            assert settled["fast"] is not old._settled["fast"]

    run(body())


def test_a_reload_with_other_rungs_starts_from_the_top(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TIMES, "faster", (0.001, 0.0005))

    async def body() -> None:
        async with laddered(tmp_path) as s:
            add_variant(tmp_path, "faster", 0.905)
            (tmp_path / "m" / "config.yaml").write_text(
                LADDER.replace("[original, fast]", "[original, faster]"))
            await overload(s, waves=20, per_wave=80)
            old_rate = s.served._rate
            await reloaded(s, s.engine.load("m"))
            assert s.served.controller.names == ("original", "faster")
            assert s.served.controller.level == 0.0
            assert s.served._rate is old_rate  # its first decision meets the surge

    run(body())

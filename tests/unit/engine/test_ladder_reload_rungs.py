"""Reloads of a laddered model under a surge that change its rungs: the new controller starts at
the top rung, as at a first load, but with the arrival rate measured before the reload, so its
first decision meets the surge instead of sending its first requests to the top rung."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.engine.route import VariantRoute
from surge.errors import ConfigError
from tests.unit.engine.test_ladder_reload import newest, reloaded
from tests.unit.engine.test_ladder_serving import (
    LADDER,
    TIMES,
    Ladder,
    add_variant,
    laddered,
    overload,
    run,
)

THREE = LADDER.replace("[original, fast]", "[original, fast, faster]")


async def first_wave(s: Ladder, rungs: tuple[str, ...]) -> dict[str, int]:
    """Items each rung of the served ladder took of one wave of 20 unpinned requests."""
    before = {r: len(newest(s, r).dispatched) for r in rungs}
    tasks = [await s.infer(float(i)) for i in range(20)]
    await s.drain()
    assert all(t.done() and t.exception() is None for t in tasks)
    return {r: sum(b.size for b in newest(s, r).dispatched[before[r]:]) for r in rungs}


@pytest.fixture(autouse=True)
def _faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TIMES, "faster", (0.001, 0.0005))


def test_a_reload_adding_a_rung_under_a_surge_meets_it_at_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            await overload(s, waves=20, per_wave=80)
            old_rate = s.served._rate
            add_variant(tmp_path, "faster", 0.905)
            (tmp_path / "m" / "config.yaml").write_text(THREE)
            await reloaded(s, s.engine.load("m"))
            assert s.served.controller.names == ("original", "fast", "faster")
            assert s.served.controller.level == 0.0  # a fresh controller...
            assert s.served._rate is old_rate  # ...deciding on the surge's arrivals
            # Before: the window started empty, and all 20 went to the original.
            taken = await first_wave(s, ("original", "fast", "faster"))
            assert taken["original"] == 0
            assert s.served.controller.level > 0.0

    run(body())


def test_a_reload_removing_the_rung_taking_the_traffic_answers_what_it_queued(
        tmp_path: Path) -> None:
    async def body() -> None:
        add_variant(tmp_path, "faster", 0.905)
        async with laddered(tmp_path, THREE) as s:
            await overload(s, waves=20, per_wave=80)
            assert s.served.controller.shares()["faster"] > 0.0
            pinned = [await s.infer(1.0, VariantRoute(variant="faster")) for _ in range(5)]
            unpinned = [await s.infer(2.0) for _ in range(30)]
            (tmp_path / "m" / "config.yaml").write_text(LADDER)
            await reloaded(s, s.engine.load("m"))
            await s.drain()
            # Accepted before the switch: answered by the old ladder, `faster` included.
            assert all(t.done() and t.exception() is None for t in pinned + unpinned)
            assert s.served.controller.names == ("original", "fast")
            assert (await first_wave(s, ("original", "fast")))["original"] == 0

    run(body())


def test_a_reload_narrowing_the_accuracy_budget_leaves_the_excluded_rung(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            await overload(s, waves=20, per_wave=80)
            assert s.served.controller.level == 1.0
            (tmp_path / "m" / "config.yaml").write_text(
                LADDER.replace("max_accuracy_drop: 1.0", "max_accuracy_drop: 0.1"))
            await reloaded(s, s.engine.load("m"))
            assert s.served.controller.excluded == ("fast",)
            # Within the new budget only the original is: it takes everything unpinned.
            assert await first_wave(s, ("original", "fast")) == {"original": 20, "fast": 0}

    run(body())


def test_an_override_narrowing_the_accuracy_budget_leaves_the_excluded_rung(
        tmp_path: Path) -> None:
    async def body() -> None:  # refused as "read by the workers": the front end reads it
        async with laddered(tmp_path) as s:
            await reloaded(s, s.engine.load("m", {"max_accuracy_drop": 0.1}))
            assert s.served.controller.excluded == ("fast",)
            with pytest.raises(ConfigError, match="ladder needs two or more different rungs"):
                await s.engine.load("m", {"ladder": ["original"]})

    run(body())

"""Reloads of a laddered model that change its config, not its rungs: settings that leave batch
times as they were keep each rung's settled batch times, so the ladder climbs back after the
surge as it would have without the reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.engine.test_ladder_reload import reloaded
from tests.unit.engine.test_ladder_serving import TIMES, laddered, overload, run
from tests.unit.engine.test_slo_edges import steady

# The original's batch times while the reloaded rungs probe beside a surge on the old ones:
# three times its own (the cores are busy), what its settled times must not be replaced with.
CONTENDED = (0.012, 0.006)


@pytest.mark.parametrize("override", [
    {"queue": {"max_size": 500}},
    {"queue": {"default_timeout_ms": 900, "priorities": {1: {"max_size": 10}}}},
    {"slo_p99_ms": 45, "hang_min_ms": 3000, "batching": {"max_queue_delay_ms": 1.0}},
])
def test_a_reload_of_settings_that_leave_batch_times_keeps_the_settled_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: dict[str, object]) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            await overload(s, waves=20, per_wave=80)
            old = s.served.controller
            calm = TIMES["original"]
            monkeypatch.setitem(TIMES, "original", CONTENDED)
            await reloaded(s, s.engine.load("m", override))
            monkeypatch.setitem(TIMES, "original", calm)
            assert s.served.controller.level == 1.0
            assert s.served.controller._settled["original"] is old._settled["original"]
            # Calm traffic for 10 s: priced at its contended probe, the original was predicted
            # past the calm margin for good and the ladder stayed on `fast`.
            await steady(s, waves=200)
            assert s.served.controller.level == 0.0

    run(body())


@pytest.mark.parametrize("override", [{"instances": 2}, {"threads": 1}, {"device": "cpu"}])
def test_a_reload_of_settings_that_change_batch_times_drops_the_settled_times(
        tmp_path: Path, override: dict[str, object]) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            await overload(s, waves=20, per_wave=80)
            old = s.served.controller
            await reloaded(s, s.engine.load("m", override))
            assert s.served.controller.level == 1.0
            assert s.served.controller._settled["original"] is not old._settled["original"]

    run(body())

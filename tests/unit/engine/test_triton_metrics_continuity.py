"""Triton's counters never fall and a scrape never holds the event loop for long: a reload
(which starts a version's statistics from zero) does not make an nv_* counter fall, neither on
one front end nor in the sums of several; a version unloaded leaves no pending count in the
sums; hundreds of versions are read a chunk per turn of the event loop, and a front end
writes into the multiprocess files only what changed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, Gauge, multiprocess, values

from surge.engine.interface import InferenceEngine
from surge.engine.stats import ModelStats
from surge.engine.triton_metrics import CHUNK, TritonSource
from surge.server.metrics_port import MetricsApp
from tests.unit.engine.test_triton_metrics import (
    _app,
    _Engine,
    _render_shared,
    _scraped,
    _stats,
    _value,
)


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The multiprocess directory, written as process 301."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 301))
    return tmp_path


def _sums(directory: Path) -> str:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return _render_shared(registry)


def test_a_reload_does_not_make_a_counter_fall() -> None:
    """Scraped at 21 successes, reloaded (its statistics from zero), 7 since: 28, not 7."""
    engine = _Engine({("m", 1): _stats("m", 1, scale=3)})
    app = _app(engine, cache=True)

    async def body() -> tuple[str, str]:
        before = await _scraped(app)
        engine._stats[("m", 1)] = _stats("m", 1)
        return before, await _scraped(app)

    before, after = asyncio.run(body())
    assert _value(before, "nv_inference_request_success") == 21
    assert _value(after, "nv_inference_request_success") == 21 + 7
    assert _value(after, "nv_inference_count") == 36 + 12
    assert _value(after, "nv_cache_num_hits_per_model") == 9 + 3
    assert _value(after, "nv_inference_request_duration_us") == 29_629 + 9_876


def test_a_reload_on_one_front_end_does_not_make_the_sums_fall(files: Path) -> None:
    engine = _Engine({("m", 1): _stats("m", 1, scale=3)})
    source = TritonSource(cast(InferenceEngine, engine), cache=True, shared=True)

    async def body() -> None:
        await source.publish()
        engine._stats[("m", 1)] = _stats("m", 1)  # reloaded, 7 answered since
        await source.publish()

    asyncio.run(body())
    assert _value(_sums(files), "nv_inference_request_success") == 21 + 7


def test_an_unloaded_version_leaves_no_pending_count_in_the_sums(files: Path) -> None:
    engine = _Engine({("m", 1): _stats("m", 1)})
    engine.metrics.queue_depth.labels("m").set(4)
    source = TritonSource(cast(InferenceEngine, engine), cache=False, shared=True)

    async def body() -> None:
        await source.publish()
        engine._stats = {("m", 2): _stats("m", 2)}  # version 2 replaced version 1
        await source.publish()

    asyncio.run(body())
    text = _sums(files)
    assert _value(text, "nv_inference_pending_request_count", version=1) == 0
    assert _value(text, "nv_inference_pending_request_count", version=2) == 4
    assert _value(text, "nv_inference_request_success", version=1) == 7  # its counts stay


class _Ticking(_Engine):
    """Records, at each version's statistics, how often another task has run meanwhile."""

    def __init__(self, stats: dict[tuple[str, int], ModelStats]) -> None:
        super().__init__(stats)
        self.ticks = 0
        self.seen: list[int] = []

    def stats(self, name: str, version: int | None = None) -> ModelStats:
        self.seen.append(self.ticks)
        return super().stats(name, version)

    async def tick(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)


def _many(count: int) -> _Ticking:
    return _Ticking({(f"m-{i}.v", 1): _stats(f"m-{i}.v", 1) for i in range(count)})


@pytest.mark.parametrize("shared", [False, True])
def test_hundreds_of_versions_are_read_a_chunk_per_turn_of_the_event_loop(
        shared: bool, files: Path) -> None:
    engine = _many(3 * CHUNK)
    source = TritonSource(cast(InferenceEngine, engine), cache=False, shared=shared)

    async def body() -> str:
        ticker = asyncio.ensure_future(engine.tick())
        await asyncio.sleep(0)
        text = await _scraped(MetricsApp(engine.metrics.registry, source))
        ticker.cancel()
        return text

    text = asyncio.run(body()) if not shared else (asyncio.run(body()), _sums(files))[1]
    assert len(engine.seen) == 3 * CHUNK
    # Other tasks ran between the chunks: the read did not hold the loop all along.
    assert len(set(engine.seen)) >= 3
    assert _value(text, "nv_inference_count", model=f"m-{3 * CHUNK - 1}.v") == 12


def test_a_front_end_writes_only_the_versions_that_changed(
        files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _Engine({("a", 1): _stats("a", 1), ("b", 1): _stats("b", 1)})
    source = TritonSource(cast(InferenceEngine, engine), cache=False, shared=True)
    asyncio.run(source.publish())
    written: list[Any] = []
    real_set = Gauge.set
    monkeypatch.setattr(Gauge, "set", lambda gauge, value: (written.append(value),
                                                            real_set(gauge, value))[1])
    engine._stats[("b", 1)] = _stats("b", 1, scale=2)
    asyncio.run(source.publish())
    assert len(written) == 13  # b's twelve counters (failures: four reasons) and its
    # pending count; nothing of a
    assert _value(_sums(files), "nv_inference_request_success", model="b") == 14

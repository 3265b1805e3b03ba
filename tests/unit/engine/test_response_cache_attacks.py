"""The response cache against hostile or careless use: inputs rewritten while queued, floods of
distinct requests, and sizes that are not sizes."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from surge.engine.metrics import SurgeMetrics
from surge.engine.response_cache import ResponseCache, held, request_key
from surge.errors import SurgeError
from surge.server.process import ServeOptions
from tests.cli_runner import run_cli
from tests.unit.engine.fakes import WIDTH, settle
from tests.unit.engine.test_response_cache import answer, cached, x


def _over(memory: bytes | bytearray, value: float) -> np.ndarray:
    """An input over `memory`, as a shared-memory input lies over its region (read-only)."""
    memory[:] = np.full((1, WIDTH), value, np.float32).tobytes()  # type: ignore[index]
    return np.frombuffer(memoryview(memory).toreadonly(), np.float32).reshape(1, WIDTH)


def test_a_region_rewritten_while_queued_cannot_make_an_answer_disagree_with_its_key(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            region = bytearray(WIDTH * 4)
            task = asyncio.create_task(served.engine.infer("m", None, {"x": _over(region, 1.0)}))
            await settle()
            region[:] = np.full((1, WIDTH), 7.0, np.float32).tobytes()  # before dispatch
            served.pool.finish()
            await settle()
            # The model computed on the bytes taken at admission, the ones keyed: 2 * 1 + 1.
            assert float((await task)["y"].flat[0]) == 3.0
            assert len(served.engine.response_cache) == 1
            hit = await answer(served, 1.0, finish=False)  # the same bytes in a body
            assert float(hit["y"].flat[0]) == 3.0
            rewritten = await served.infer(7.0)  # what the region holds now: another key
            served.pool.finish()
            await settle()
            assert float((await rewritten[0])["y"].flat[0]) == 15.0
            assert len(served.pool.dispatched) == 2

    asyncio.run(body())


def test_inputs_over_a_region_are_copied_only_for_a_cached_model(tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path, capacity=0) as served:  # no cache: served uncached
            region = bytearray(WIDTH * 4)
            task = asyncio.create_task(served.engine.infer("m", None, {"x": _over(region, 1.0)}))
            await settle()
            (queued,) = served.pool.dispatched[0].requests
            assert np.shares_memory(queued.inputs["x"], np.frombuffer(region, np.float32))
            served.pool.finish()
            await settle()
            await task

    asyncio.run(body())


def test_the_copy_of_a_regions_input_is_read_only_and_others_are_not_copied() -> None:
    region = bytearray(WIDTH * 4)
    lent, body = _over(region, 1.0), np.ones((1, WIDTH), np.float32)
    kept = held({"a": lent, "b": body})
    assert not np.shares_memory(kept["a"], lent)
    assert not kept["a"].flags.writeable
    assert kept["b"] is body
    region[:] = np.full((1, WIDTH), 9.0, np.float32).tobytes()
    assert float(kept["a"].flat[0]) == 1.0


def test_copies_of_region_inputs_in_flight_stay_within_the_cache_size(tmp_path: Path) -> None:
    size = WIDTH * 4  # one input's bytes: the cache's size holds one copy, not two
    async def body() -> None:
        async with cached(tmp_path, capacity=size * 3 // 2) as served:
            regions = [bytearray(size), bytearray(size)]
            tasks = [asyncio.create_task(served.engine.infer("m", None, {"x": _over(region, value)}))
                     for region, value in zip(regions, (1.0, 2.0), strict=True)]
            await settle()
            queued = {float(r.inputs["x"].flat[0]): r.inputs["x"]
                      for batch in served.pool.dispatched for r in batch.requests}
            assert not np.shares_memory(queued[1.0], np.frombuffer(regions[0], np.float32))
            # Past the bound: read in place, uncached, rather than one more copy.
            assert np.shares_memory(queued[2.0], np.frombuffer(regions[1], np.float32))
            while any(served.pool.held):
                served.pool.finish()
                await settle()
            assert [float((await t)["y"].flat[0]) for t in tasks] == [3.0, 5.0]
            assert served.engine.response_cache.copied == 0

    asyncio.run(body())


def test_inputs_over_an_immutable_body_are_stored(tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            raw = np.full((1, WIDTH), 2.0, np.float32).tobytes()  # an HTTP binary body's bytes
            first = asyncio.create_task(served.engine.infer(
                "m", None, {"x": np.frombuffer(memoryview(raw)[0:], np.float32)
                            .reshape(1, WIDTH)}))
            await settle()
            served.pool.finish()
            await settle()
            await first
            assert len(served.engine.response_cache) == 1
            await served.engine.infer("m", None, x(2.0))
            assert len(served.pool.dispatched) == 1

    asyncio.run(body())


def test_a_flood_of_small_distinct_answers_stays_within_the_size_in_memory() -> None:
    capacity = 1 << 20
    cache = ResponseCache(SurgeMetrics(), capacity)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            key = request_key("m", 1, {"x": np.array([i], np.int64)}, None)
            assert key is not None
            cache._store(key, {"y": np.array([i], np.float32)})
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.used <= capacity
    assert held <= capacity * 1.1, f"{held} bytes held by a cache of {capacity}"
    assert cache.metrics.registry.get_sample_value("surge_response_cache_bytes") == cache.used


@pytest.mark.parametrize("size", ["1e400", "1e3", "0.1", "1_000", "\uff11\uff10", "0x10", "-1"])
def test_serve_refuses_sizes_that_are_not_plain_sizes(size: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["serve", "no-such-repo", "--response-cache-bytes", size], capsys)
    assert code == 2
    assert f"--response-cache-bytes {size!r}: give 0 (no cache) or a size" in out + err
    assert len((out + err).strip().splitlines()) == 1


def test_a_size_past_the_machines_memory_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    size = str(2**70)
    code, out, err = run_cli(["serve", "no-such-repo", "--response-cache-bytes", size], capsys)
    assert code == 2
    assert f"--response-cache-bytes {size!r}: {size} bytes is more than this machine's " \
        "memory" in out + err
    assert len((out + err).strip().splitlines()) == 1
    with pytest.raises(SurgeError, match="more than this machine's memory"):
        ServeOptions(response_cache_bytes=2**70)
    assert ServeOptions(response_cache_bytes=1 << 20).response_cache_bytes == 1 << 20

"""The response cache: its key, LRU by bytes, and the engine's requests answered from it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from surge.engine import Engine
from surge.engine.metrics import SurgeMetrics
from surge.engine.response_cache import ResponseCache, request_key, size_cache
from surge.engine.route import VariantRoute, request_route
from surge.errors import ConfigError, InputError, SurgeError
from surge.repository import Repository
from surge.repository.config import parse_config
from surge.server.process import ServeOptions
from tests.cli_runner import run_cli
from tests.unit.engine.fakes import WIDTH, FakeClock, FakePools, Served, make_repo, settle

CACHED = "response_cache: true\nbatching: {max_queue_delay_ms: 0}\n"


def x(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, WIDTH), value, np.float32)}


# -- the key ---------------------------------------------------------------------------------
def test_the_key_covers_every_field_that_changes_the_answer() -> None:
    base = request_key("m", 1, {"a": np.arange(4, dtype=np.float32)}, None)
    variants = [
        request_key("n", 1, {"a": np.arange(4, dtype=np.float32)}, None),  # model
        request_key("m", 2, {"a": np.arange(4, dtype=np.float32)}, None),  # version
        request_key("m", 1, {"b": np.arange(4, dtype=np.float32)}, None),  # input name
        request_key("m", 1, {"a": np.arange(4, dtype=np.int32)}, None),  # dtype
        request_key("m", 1, {"a": np.arange(4, dtype=np.float32).reshape(2, 2)}, None),  # shape
        request_key("m", 1, {"a": np.arange(1, 5, dtype=np.float32)}, None),  # bytes
        request_key("m", 1, {"a": np.arange(4, dtype=np.float32)}, ["y"]),  # outputs asked
        request_key("m", 1, {"a": np.arange(4, dtype=np.float32)}, []),
    ]
    assert base is not None
    assert base not in variants
    assert len(set(variants)) == len(variants)
    # the same request, its inputs listed in another order or its array laid out otherwise
    two = {"a": np.ones(2, np.float32), "b": np.zeros(2, np.float32)}
    assert request_key("m", 1, two, None) == request_key("m", 1, dict(reversed(two.items())),
                                                         None)
    strided = np.arange(8, dtype=np.float32)[::2]
    assert request_key("m", 1, {"a": strided}, None) == request_key(
        "m", 1, {"a": np.ascontiguousarray(strided)}, None)


def test_bytes_elements_are_keyed_by_their_boundaries() -> None:
    def key(*items: bytes) -> object:
        array = np.empty(len(items), dtype=object)
        array[:] = list(items)
        return request_key("m", 1, {"t": array}, None)

    assert key(b"ab", b"c") != key(b"a", b"bc")
    assert key(b"ab", b"c") == key(b"ab", b"c")
    odd = np.empty(1, dtype=object)
    odd[0] = 3  # no decoder makes one: not keyed, so not cached
    assert request_key("m", 1, {"t": odd}, None) is None


# -- the store -------------------------------------------------------------------------------
class Model:
    """The part of a served model the cache reads."""

    def __init__(self, name: str = "m", version: int = 1, enabled: bool = True) -> None:
        from surge.engine.stats import Counters

        self.name, self.version, self.variant_name = name, version, "original"
        self.config = parse_config({"response_cache": enabled}, "config.yaml")
        self.counters = Counters()
        self.computed = 0

    def compute(self, size: int) -> object:
        async def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.computed += 1
            return {"y": np.zeros(size, np.uint8)}
        return run


def ask(cache: ResponseCache, model: Model, value: float, size: int = 100
        ) -> dict[str, np.ndarray]:
    return asyncio.run(cache.infer(model, x(value), None, model.compute(size)))  # type: ignore[arg-type]


def entry_bytes(size: int = 100) -> int:
    """What one stored answer of `size` bytes counts (the arrays and Python's objects)."""
    cache = ResponseCache(SurgeMetrics(), capacity=1 << 20)
    ask(cache, Model(), 0, size)
    return cache.used


def test_least_recently_used_entries_go_first_to_fit_by_bytes() -> None:
    entry = entry_bytes()
    assert entry > 100 + 32  # the objects holding the answer count too
    cache, model = ResponseCache(SurgeMetrics(), capacity=2 * entry), Model()
    ask(cache, model, 1)
    ask(cache, model, 2)
    ask(cache, model, 1)  # a hit: 1 is now the most recently used
    assert (model.computed, len(cache), cache.used) == (2, 2, 2 * entry)
    ask(cache, model, 3)  # evicts 2, not 1
    ask(cache, model, 1)
    assert model.computed == 3
    ask(cache, model, 2)
    assert model.computed == 4
    assert cache.used <= cache.capacity


def test_an_answer_larger_than_the_cache_is_not_stored() -> None:
    cache, model = ResponseCache(SurgeMetrics(), capacity=1000), Model()
    ask(cache, model, 1, size=50)
    ask(cache, model, 2, size=2000)
    ask(cache, model, 2, size=2000)
    assert model.computed == 3
    assert len(cache) == 1  # the small one stayed
    ask(cache, model, 1, size=50)
    assert model.computed == 3


def test_a_model_without_the_option_or_a_server_without_a_cache_always_computes() -> None:
    off, model = ResponseCache(SurgeMetrics(), capacity=10_000), Model(enabled=False)
    ask(off, model, 1)
    ask(off, model, 1)
    none, enabled = ResponseCache(SurgeMetrics()), Model()
    ask(none, enabled, 1)
    ask(none, enabled, 1)
    assert (model.computed, enabled.computed, len(off), len(none)) == (2, 2, 0, 0)
    assert enabled.counters.cache_miss.count == 0


def test_resizing_evicts_what_no_longer_fits_and_sizes_are_checked() -> None:
    cache, model = ResponseCache(SurgeMetrics(), capacity=10_000), Model()
    for value in range(5):
        ask(cache, model, value)
    cache.resize(2 * entry_bytes() + 10)
    assert len(cache) == 2
    assert cache.used <= cache.capacity
    with pytest.raises(SurgeError, match="-1"):
        cache.resize(-1)
    with pytest.raises(SurgeError, match="--response-cache-bytes 5"):
        size_cache(object(), 5)
    size_cache(object(), 0)  # an engine without a cache, asked for none


# -- through the engine ----------------------------------------------------------------------
@asynccontextmanager
async def cached(root: Path, config: str = CACHED, capacity: int = 1 << 20
                 ) -> AsyncIterator[Served]:
    make_repo(root, config)
    pools, clock = FakePools(), FakeClock()
    engine = Engine(Repository(root), pool_factory=pools, clock=clock)
    engine.response_cache.resize(capacity)
    await engine.start()
    try:
        yield Served(engine, pools, clock)
    finally:
        await engine.stop(grace_s=0.0)


async def answer(served: Served, value: float, finish: bool = True) -> dict[str, np.ndarray]:
    """One request; the pool answers it when it reached the pool."""
    (task,) = await served.infer(value)
    if finish and any(served.pool.held):
        served.pool.finish()
        await settle()
    return await task


def test_an_identical_request_is_answered_without_reaching_the_model(tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            first = await answer(served, 1.0)
            second = await answer(served, 1.0, finish=False)
            np.testing.assert_array_equal(second["y"], first["y"])
            assert len(served.pool.dispatched) == 1
            other = await answer(served, 2.0)  # different inputs miss
            assert float(other["y"].flat[0]) == 5.0
            assert len(served.pool.dispatched) == 2
            stats = served.engine.stats("m")
            assert (stats.cache_hit[0], stats.cache_miss[0]) == (1, 2)
            assert stats.success[0] == 3  # hits count as successes, as in Triton
            assert (stats.inference_count, stats.execution_count) == (2, 2)
            metrics = served.engine.metrics.registry
            assert metrics.get_sample_value("surge_cache_hits_total", {"model": "m"}) == 1
            assert metrics.get_sample_value("surge_cache_misses_total", {"model": "m"}) == 2

    asyncio.run(body())


def test_a_failed_request_is_not_cached(tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            (task,) = await served.infer(1.0)
            served.pool.fail()
            await settle()
            with pytest.raises(Exception, match="runner raised"):
                await task
            assert len(served.engine.response_cache) == 0
            await answer(served, 1.0)
            assert len(served.pool.dispatched) == 2

    asyncio.run(body())


def test_callers_cannot_change_what_the_cache_holds(tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            first = await answer(served, 1.0)
            first["y"][:] = -7  # the computed answer, written by its caller
            second = await answer(served, 1.0)
            assert float(second["y"].flat[0]) == 3.0
            second["y"][:] = -9  # a hit's answer is the caller's own copy
            third = await answer(served, 1.0)
            assert float(third["y"].flat[0]) == 3.0
            assert len(served.pool.dispatched) == 1

    asyncio.run(body())


def test_reload_and_unload_drop_the_models_answers(tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            await answer(served, 1.0)
            await served.engine.load("m")
            assert len(served.engine.response_cache) == 0
            await answer(served, 1.0)
            assert len(served.pool.dispatched) == 1  # the new pool computed it
            await served.engine.unload("m")
            assert len(served.engine.response_cache) == 0

    asyncio.run(body())


def test_a_load_override_turns_the_cache_off_and_a_ladder_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            await served.engine.load("m", {"response_cache": False})
            await answer(served, 1.0)
            await answer(served, 1.0)
            assert len(served.pool.dispatched) == 2
            with pytest.raises(ConfigError, match="response_cache is for kind model without"):
                await served.engine.load("m", {"response_cache": True, "ladder": [
                    "original", "int8"], "slo_p99_ms": 10, "max_accuracy_drop": 1})

    asyncio.run(body())


def test_an_answer_computed_across_a_reload_is_not_stored(tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            (task,) = await served.infer(1.0)
            old, old_model = served.pool, served.model
            reload = asyncio.create_task(served.engine.load("m"))
            while served.model is old_model:  # the config is read on a thread
                await asyncio.sleep(0.01)
            await settle()  # the new version serves; the old one drains the request
            assert not task.done()
            old.finish()
            await settle()
            await task
            await reload
            assert len(served.engine.response_cache) == 0

    asyncio.run(body())


def test_a_hit_refuses_a_pin_the_model_cannot_honour_and_reports_what_served(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            await answer(served, 1.0)
            token = request_route.set(VariantRoute(variant="int8"))
            try:
                with pytest.raises(InputError, match="int8"):
                    await served.engine.infer("m", None, x(1.0))
            finally:
                request_route.reset(token)
            route = VariantRoute()
            token = request_route.set(route)
            try:
                await served.engine.infer("m", None, x(1.0))
            finally:
                request_route.reset(token)
            assert (route.served, route.version) == ("original", 1)
            assert len(served.pool.dispatched) == 1

    asyncio.run(body())


def test_a_server_without_a_cache_serves_the_model_uncached_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with cached(tmp_path, capacity=0) as served:
            await answer(served, 1.0)
            await answer(served, 1.0)
            assert len(served.pool.dispatched) == 2

    with caplog.at_level(logging.WARNING, logger="surge.engine.response_cache"):
        asyncio.run(body())
    assert "model m: config.yaml sets response_cache but the server has no response cache" \
        in caplog.text


# -- config and options ----------------------------------------------------------------------
@pytest.mark.parametrize(("data", "message"), [
    ({"response_cache": "yes"}, "response_cache: Input should be a valid boolean (got 'yes')"),
    ({"response_cache": {"enable": 1}}, "(got 1)"),
    ({"response_cache": {"enabled": True}}, "(got {'enabled': True})"),
    ({"response_cache": True, "ladder": ["original", "int8"], "slo_p99_ms": 10,
      "max_accuracy_drop": 1}, "response_cache is for kind model without a ladder"),
])
def test_bad_response_cache_configs_are_refused_naming_the_value(data: dict[str, object],
                                                                 message: str) -> None:
    with pytest.raises(ConfigError, match="config.yaml") as error:
        parse_config(data, "m/config.yaml")
    assert message in str(error.value)


def test_triton_form_and_plain_flag_both_enable_it() -> None:
    assert parse_config({"response_cache": {"enable": True}}, "c").response_cache is True
    assert parse_config({"response_cache": True}, "c").response_cache is True
    assert parse_config({}, "c").response_cache is False


@pytest.mark.parametrize("size", ["64M", "-5", "lots", "nan"])
def test_serve_refuses_a_bad_cache_size_in_one_line(size: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["serve", "no-such-repo", "--response-cache-bytes", size], capsys)
    assert code == 2
    assert f"--response-cache-bytes {size!r}: give 0 (no cache) or a size" in out + err
    assert len((out + err).strip().splitlines()) == 1


def test_serve_cache_sizes_parse_and_options_are_checked() -> None:
    from surge.commands.serve import _cache_bytes

    assert (_cache_bytes("0"), _cache_bytes("64MB"), _cache_bytes("1048576")) == (
        0, 64_000_000, 1_048_576)
    for bad in (-1, True, 1.5):
        with pytest.raises(SurgeError, match="--response-cache-bytes"):
            ServeOptions(response_cache_bytes=bad)  # type: ignore[arg-type]

"""`surge_model_memory_bytes{model}` follows what is resident: 0 once a model is unloaded,
explicitly or to fit the memory budget, and its measured size again once it is reloaded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.unit.engine.test_on_demand import MB, models


def test_an_explicit_unload_sets_the_models_memory_to_zero(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": ""}, load="eager") as m:
            m.pools.sizes["a"] = 120 * MB
            await m.loaded("a")
            await m.engine.load("a")  # measured again with the size set above
            assert m.metric("surge_model_memory_bytes", model="a") == 120 * MB
            await m.engine.unload("a")
            assert m.state("a")[0] == "UNAVAILABLE"
            assert m.metric("surge_model_memory_bytes", model="a") == 0
            await m.engine.load("a")
            assert m.metric("surge_model_memory_bytes", model="a") == 120 * MB

    asyncio.run(body())


def test_an_evicted_models_memory_reads_zero_until_its_next_load(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": ""}, budget_mb=150) as m:
            await m.answer("a")
            m.clock.advance(1.0)
            await m.answer("b")  # a and b do not fit together: a is evicted
            assert m.state("a")[0] == "EVICTED"
            assert m.metric("surge_model_memory_bytes", model="a") == 0
            assert m.metric("surge_model_memory_bytes", model="b") == 100 * MB
            m.clock.advance(1.0)
            await m.answer("a")  # loads again, evicting b
            assert m.metric("surge_model_memory_bytes", model="a") == 100 * MB
            assert m.metric("surge_model_memory_bytes", model="b") == 0

    asyncio.run(body())

"""Load on demand combined with the other features: repository polling, explicit loads,
pipelines, in-process placement and accuracy ladders, on scripted pools."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from surge.engine.reload import RepositoryPoller
from surge.errors import ModelNotReadyError
from tests.unit.engine.test_on_demand import models


def _touch(root: Path, name: str) -> None:
    config = root / name / "config.yaml"
    config.write_text(config.read_text() + "# changed\n")


def test_a_poll_reloads_loaded_models_and_leaves_cold_ones_for_their_next_request(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": "", "c": ""}, budget_mb=250) as m:
            await m.answer("a")
            m.pools.failures["c"] = "bad weights"
            with pytest.raises(ModelNotReadyError, match="failed to load"):
                await m.send("c")
            del m.pools.failures["c"]  # fixed on disk, within the backoff
            poller = RepositoryPoller(m.engine, m.engine.repository, 1.0)
            poller.snapshot()
            for name in ("a", "b", "c"):
                _touch(tmp_path, name)
            await poller.poll()
            await poller.poll()  # settled for an interval: acted on
            assert m.pools.starts["a"] == 2  # served: reloaded with its new files
            assert m.pools.starts["b"] == 0  # never asked for: still cold, evicts nothing
            assert m.state("b") == ("UNLOADED", "loads on its first request")
            assert m.state("c") == ("UNLOADED", "loads on its first request")
            # c's next request loads its new files at once, past the failed load's backoff.
            assert float((await m.answer("c"))[0, 0]) == 3.0

    asyncio.run(body())


def test_an_explicit_load_ends_the_backoff_of_a_failed_load(tmp_path: Path) -> None:
    async def body() -> None:
        async with models(tmp_path, {"a": "", "b": ""}, budget_mb=150) as m:
            m.pools.failures["a"] = "bad weights"
            with pytest.raises(ModelNotReadyError, match="failed to load"):
                await m.send("a")
            del m.pools.failures["a"]
            await m.engine.load("a")
            await m.answer("b")  # 100 MB each, 150 MB budget: a is evicted
            assert m.state("a")[0] == "EVICTED"
            # Before: refused for the rest of the backoff with the reason of the old failure.
            assert float((await m.answer("a"))[0, 0]) == 3.0

    asyncio.run(body())


def test_a_pipeline_whose_step_model_was_unloaded_says_so_with_a_503(tmp_path: Path) -> None:
    from surge.pipeline.served import ServedPipeline
    from tests.unit.engine.test_on_demand import pipeline_engine
    from tests.unit.pipeline.test_served import values

    async def body() -> None:
        engine = pipeline_engine(tmp_path, 1000)
        await engine.start()
        try:
            assert (await engine.infer("p", None, values(1.0)))["total"].shape == (1, 1)
            pipeline = engine._find("p", None)
            assert isinstance(pipeline, ServedPipeline)
            await engine.unload("m")
            (row,) = [r for r in engine.index() if r["name"] == "p"]
            assert (row["state"], row["reason"]) == (
                "UNAVAILABLE", "its step model 'm' is not ready")  # before: "no live worker"
            with pytest.raises(ModelNotReadyError, match="its step model 'm' is not ready"):
                await engine.infer("p", None, values(1.0))
            # A request that passed the pipeline's ready check just before the unload: its
            # step finds the model gone. Before: NotFoundError, a 404 for a pipeline there is.
            request = pipeline.make_request(values(1.0), None, 0, None, "")
            with pytest.raises(ModelNotReadyError, match="step 'double': model 'm' is not "
                                                         "loaded: unloaded"):
                await pipeline.infer(request)
            await engine.load("m")
            assert (await engine.infer("p", None, values(1.0)))["total"].shape == (1, 1)
        finally:
            await engine.stop(grace_s=0.0)

    asyncio.run(body())


def test_on_demand_refusals_say_when_to_ask_again(tmp_path: Path) -> None:
    from surge.protocol.errors import retry_after_header

    async def body() -> None:
        async with models(tmp_path, {"a": ""}) as m:
            m.pools.failures["a"] = "bad weights"
            m.pools.load_s["a"] = 0.5
            with pytest.raises(ModelNotReadyError) as failed:
                await m.send("a")
            assert retry_after_header(failed.value) == "1"  # the backoff after a failure
            m.clock.advance(1.1)
            with pytest.raises(ModelNotReadyError):
                await m.send("a")  # the second in a row: 2 s
            with pytest.raises(ModelNotReadyError, match="tried again") as refused:
                await m.send("a")
            assert retry_after_header(refused.value) == "2"
            del m.pools.failures["a"]
            m.clock.advance(2.0)
            m.pools.load_s["a"] = 3.0
            await m.answer("a")
            await m.engine.evict("a")
            # Still loading as the request reads the queue policy (a thread's turn away): a
            # load finished by then would take the request, and nothing here answers it.
            m.pools.gates["a"] = asyncio.Event()
            # Its cold start is known to take 3 s: a request allowing 1 s is refused at once.
            with pytest.raises(ModelNotReadyError, match="cold start") as slow:
                await m.send("a", timeout_us=1_000_000)
            assert retry_after_header(slow.value) == "3"
            m.pools.gates["a"].set()

    asyncio.run(body())


def test_a_model_placed_in_process_counts_what_it_added_to_the_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`placement: in-process` (say, a reload's override) has no process of its own: before,
    it was measured at 0 bytes, so a budget neither counted it nor could evict it."""
    import numpy as np

    from surge.engine.ondemand import measure
    from surge.workers import threads
    from surge.workers.placement import Placement

    class BigRunner:
        signature = None

        def __init__(self) -> None:
            self.weights = np.ones(64 * 2**20 // 8)  # 64 MiB, touched

    monkeypatch.setattr(threads, "load", lambda spec: BigRunner())

    async def body() -> None:
        events = SimpleNamespace(on_done=lambda *args: None)
        pool = threads.InProcessPool("/nowhere", "m", 1, [Placement("cpu", 1)],
                                     events)  # type: ignore[arg-type]
        await pool.start()
        try:
            assert measure([pool]) >= 48 * 2**20
        finally:
            await pool.stop(0.0)
        assert measure([pool]) == 0

    asyncio.run(body())

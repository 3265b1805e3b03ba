"""Statistics and metrics of a served model: counts, queue and compute times, on a fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from surge.errors import QueueFullError
from surge.protocol.metadata import model_statistics
from tests.unit.engine.fakes import Served, serving, settle

BATCHING = "max_batch_size: 4\nbatching: {max_queue_delay_ms: 2}\n"


def test_counts_and_times_of_a_computed_batch(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, BATCHING) as s:
            tasks = [*await s.infer(1, rows=2), *await s.infer(2)]
            await s.tick(0.002)  # both waited 2 ms: one batch of 3 rows
            s.clock.advance(0.005)
            s.pool.finish(input_ns=1_000, infer_ns=4_000, output_ns=500, service_s=0.004)
            await asyncio.gather(*tasks)
            stats = s.engine.stats("m")
            assert (stats.name, stats.version) == ("m", 1)
            assert (stats.inference_count, stats.execution_count) == (3, 1)
            assert stats.queue[0] == 2
            assert stats.queue[1] == pytest.approx(2 * 2_000_000, abs=10)
            assert stats.success[0] == 2
            assert stats.success[1] == pytest.approx(2 * 7_000_000, abs=10)
            assert stats.fail == (0, 0)
            assert stats.compute_input == (1, 1_000)
            assert stats.compute_infer == (1, 4_000)
            # The worker's output time plus the front end's split of the outputs.
            assert stats.compute_output[0] == 1
            assert stats.compute_output[1] >= 500
            assert stats.batch_stats == {3: (1, 5_500)}
            assert stats.last_inference > 0
            # The service time the pool measured, not the time since dispatch, is the estimate.
            assert s.model.scheduler.batch_time(3) == pytest.approx(0.004)

    asyncio.run(body())


def test_metrics_of_queue_compute_and_batch_size(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, BATCHING) as s:
            tasks = await s.infer(1, 2, 3)
            await s.tick(0.002)
            assert sample(s, "surge_queue_depth") == 0.0
            s.clock.advance(0.005)
            s.pool.finish()
            await asyncio.gather(*tasks)
            assert sample(s, "surge_queue_duration_seconds_count") == 3
            assert sample(s, "surge_queue_duration_seconds_sum") == pytest.approx(0.006)
            assert sample(s, "surge_compute_duration_seconds_sum") == pytest.approx(0.005)
            assert sample(s, "surge_batch_size_sum") == 3

    asyncio.run(body())


def test_failed_requests_are_counted_with_their_time_and_no_execution(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, BATCHING) as s:
            (task,) = await s.infer(1)
            await s.tick(0.002)
            s.clock.advance(0.001)
            s.pool.fail()
            with pytest.raises(RuntimeError):
                await task
            stats = s.engine.stats("m")
            assert stats.fail[0] == 1
            assert stats.fail[1] == pytest.approx(3_000_000, abs=10)
            assert (stats.success, stats.inference_count, stats.execution_count) == ((0, 0), 0, 0)

    asyncio.run(body())


def test_refused_and_abandoned_requests_count_as_failed_not_answered(tmp_path: Path) -> None:
    """Triton's `fail` counts what was refused at admission and what its client left, queued or
    computing; `success` only what was answered (as surge_requests_total{outcome="success"})."""
    async def body() -> None:
        config = "max_batch_size: 1\nqueue: {max_size: 1}\n"
        async with serving(tmp_path, config, depth=1) as s:
            (computing,) = await s.infer(1)
            (queued,) = await s.infer(2)
            (refused,) = await s.infer(3)
            with pytest.raises(QueueFullError):
                await refused
            computing.cancel()
            queued.cancel()
            await settle()
            s.pool.finish()
            await settle()
            stats = s.engine.stats("m")
            assert stats.fail[0] == 3
            assert stats.success == (0, 0)
            assert (stats.inference_count, stats.execution_count) == (1, 1)

    asyncio.run(body())


def test_batch_stats_give_each_phase_of_each_batch_size(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, BATCHING) as s:
            tasks = await s.infer(1, 2, 3)
            await s.tick(0.002)
            s.pool.finish(input_ns=1_000, infer_ns=4_000, output_ns=500)
            await asyncio.gather(*tasks)
            (entry,) = model_statistics("m", 1, s.engine.stats("m"))["batch_stats"]
            assert entry["batch_size"] == 3
            assert entry["compute_input"] == {"count": 1, "ns": 1_000}
            assert entry["compute_infer"] == {"count": 1, "ns": 4_000}
            assert entry["compute_output"]["count"] == 1
            assert entry["compute_output"]["ns"] >= 500

    asyncio.run(body())


def sample(s: Served, name: str) -> float | None:
    return s.engine.metrics.registry.get_sample_value(name, {"model": "m"})

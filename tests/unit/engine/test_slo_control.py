"""A model with `slo_p99_ms` on a scripted pool: the load-time latency probe, admission from the
first request, SLO batching in the driver and the metrics of the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from surge.engine import Engine
from surge.engine.probe import probe_inputs
from surge.engine.timing import LAG_HOPS, LoopLag
from surge.errors import DeadlineExceededError, QueueFullError
from surge.repository import Repository
from surge.runtimes.base import Signature, TensorSpec
from tests.unit.engine.fakes import FakeClock, FakePools, Served, make_repo, settle

T = TypeVar("T")
SLO = "max_batch_size: 8\nslo_p99_ms: 50\n"


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@asynccontextmanager
async def probed(root: Path, config: str = SLO) -> AsyncIterator[Served]:
    """Serving a model whose probe batches (1, then 8) take 2.5 ms and 6 ms: a = 2, b = 0.5 ms."""
    make_repo(root, config)
    pools, clock = FakePools(), FakeClock()
    engine = Engine(Repository(root), pool_factory=pools, clock=clock)
    starting = asyncio.create_task(engine.start())
    served = Served(engine, pools, clock)
    for probe, (size, seconds) in enumerate(((1, 0.0025), (8, 0.006))):
        for _ in range(500):  # the config is read in a thread: wait for the probe's batch
            if pools.built and len(served.pool.dispatched) > probe:
                break
            await asyncio.sleep(0.01)
        assert served.pool.dispatched[-1].size == size
        served.pool.finish(service_s=seconds)
    await starting
    try:
        yield served
    finally:
        await engine.stop(grace_s=0.0)


def test_load_probes_batch_times_and_counts_them_nowhere(tmp_path: Path) -> None:
    async def body() -> None:
        async with probed(tmp_path) as s:
            assert s.model.scheduler.batch_time(1) == pytest.approx(0.0025)
            assert s.model.scheduler.fitted_time(4) == pytest.approx(0.004)
            stats = s.engine.stats("m")
            assert stats.inference_count == 0
            assert stats.success == (0, 0)
            assert stats.latency["a_ms"] == pytest.approx(2.0)
            assert stats.latency["b_ms"] == pytest.approx(0.5)

    run(body())


def test_a_model_without_slo_is_not_probed(tmp_path: Path) -> None:
    async def body() -> None:
        make_repo(tmp_path, "max_batch_size: 8\n")
        pools = FakePools()
        engine = Engine(Repository(tmp_path), pool_factory=pools, clock=FakeClock())
        await engine.start()
        assert pools.built[-1].dispatched == []
        assert engine.stats("m").latency == {}
        await engine.stop(grace_s=0.0)

    run(body())


def test_first_burst_after_load_is_refused_past_what_the_deadline_allows(tmp_path: Path) -> None:
    async def body() -> None:
        async with probed(tmp_path) as s:
            # 10 ms each. The first goes at once (2.5 ms); behind it, n queued items take
            # 2 + 0.5 n ms as one batch: 11 of them fit, the other 8 are refused at once.
            tasks = await s.infer(*range(20), timeout_us=10_000)
            refused = [t for t in tasks if t.done() and isinstance(t.exception(), QueueFullError)]
            assert len(refused) == 8
            error = refused[0].exception()
            assert isinstance(error, QueueFullError)
            assert error.retry_after_s is not None
            assert error.retry_after_s > 0
            assert s.engine.metrics.rejected.labels("m", "admission")._value.get() == 8
            assert s.engine.metrics.shed.labels("m", "predicted_miss")._value.get() == 8
            admitted = [t for t in tasks if t not in refused]
            for _ in range(20):
                if all(t.done() for t in admitted):
                    break
                if s.pool.held[0]:
                    s.pool.finish(service_s=0.006)
                await s.tick(0.001)
            assert all(t.done() and t.exception() is None for t in admitted)

    run(body())


def test_idle_slo_model_dispatches_at_once_and_counts_slo_attainment(tmp_path: Path) -> None:
    async def body() -> None:
        async with probed(tmp_path) as s:
            probes = len(s.pool.dispatched)
            (task,) = await s.infer(1.0)
            assert len(s.pool.dispatched) == probes + 1  # no batching delay paid
            await s.tick(0.003)
            s.pool.finish(service_s=0.003)
            await settle()
            assert task.done()
            (late,) = await s.infer(2.0)
            await s.tick(0.080)  # answered after 80 ms: outside the 50 ms SLO
            s.pool.finish(service_s=0.080)
            await settle()
            assert late.done()
            metrics = s.engine.metrics
            assert metrics.slo_requests.labels("m", "yes")._value.get() == 1
            assert metrics.slo_requests.labels("m", "no")._value.get() == 1
            assert metrics.batch_time_fit.labels("m", "intercept")._value.get() > 0

    run(body())


def test_probe_inputs_follow_the_signature_or_give_up() -> None:
    fixed = Signature((TensorSpec("x", "FP32", (-1, 3, 2)), TensorSpec("k", "INT64", (-1, 1))),
                      (), batched=True)
    inputs = probe_inputs(fixed, 4)
    assert inputs is not None
    assert inputs["x"].shape == (4, 3, 2)
    assert inputs["k"].dtype == np.int64
    variable = Signature((TensorSpec("ids", "INT64", (-1, -1)),), (), batched=True)
    assert probe_inputs(variable, 4) is None
    text = Signature((TensorSpec("s", "BYTES", (-1, 1)),), (), batched=True)
    assert probe_inputs(text, 1) is None
    single = Signature((TensorSpec("x", "FP32", (3,)),), (), batched=False)
    one = probe_inputs(single, 1)
    assert one is not None
    assert one["x"].shape == (3,)


def test_a_hung_probe_is_not_retried_and_the_model_still_loads(tmp_path: Path) -> None:
    async def body() -> None:
        make_repo(tmp_path, SLO)
        pools = FakePools()
        engine = Engine(Repository(tmp_path), pool_factory=pools, clock=FakeClock())
        starting = asyncio.create_task(engine.start())
        for _ in range(500):
            if pools.built and pools.built[-1].dispatched:
                break
            await asyncio.sleep(0.01)
        pool = pools.built[-1]
        pool.hang()
        pool.restart()
        await starting
        served = Served(engine, pools, engine.clock)  # type: ignore[arg-type]
        assert len(pool.dispatched) == 1  # neither retried nor followed by the full batch
        assert served.model.scheduler.queued == 0
        assert engine.stats("m").inference_count == 0
        await engine.stop(grace_s=0.0)

    run(body())


def test_requests_the_dispatch_finds_late_are_answered_and_never_computed(tmp_path: Path) -> None:
    async def body() -> None:
        async with probed(tmp_path) as s:
            await s.infer(0.0)  # the worker computes it (2.5 ms)
            # 7 wait behind it: 2.5 + 5.5 ms predicted against 10 ms each, all admitted
            queued = await s.infer(*range(1, 8), timeout_us=10_000)
            assert not any(t.done() for t in queued)
            s.model._set_lag(0.0052)  # the front end's lag, learnt meanwhile
            s.pool.finish(service_s=0.0025)
            await settle()
            # 5.2 ms of lag + a batch of 7 (5.5 ms) or 6 (5 ms) passes 10 ms; of 5 (4.5 ms) not
            late = [t for t in queued if t.done()]
            assert len(late) == 2
            for task in late:
                error = task.exception()
                assert isinstance(error, DeadlineExceededError)
                assert "refused before computing" in str(error)
            assert s.pool.dispatched[-1].size == 5
            assert s.engine.metrics.shed.labels("m", "late")._value.get() == 2
            s.pool.finish(service_s=0.0045)
            await settle()
            assert all(t.done() and t.exception() is None for t in queued if t not in late)

    run(body())


def test_the_loop_lag_probe_sets_what_admission_allows_for(tmp_path: Path) -> None:
    async def body() -> None:
        async with probed(tmp_path) as s:
            first = asyncio.create_task(s.engine.infer("m", None, {"x": np.ones((1, 4),
                                                                             np.float32)}))
            await asyncio.sleep(0)  # it arrived and queued its probe of the loop...
            s.clock.advance(0.030)  # ...which the loop runs 30 ms later
            await asyncio.sleep(0)
            lag = s.model.scheduler.lag_s
            assert lag == pytest.approx(LAG_HOPS * 0.2 * 0.030)  # first sample: a fifth of it
            # 2.5-5 ms of batches plus `lag` (12 ms): 12 ms is too little, 100 ms enough
            (tight,) = await s.infer(1.0, timeout_us=12_000)
            (loose,) = await s.infer(2.0, timeout_us=100_000)
            assert isinstance(tight.exception(), QueueFullError)
            assert not loose.done()
            for _ in range(3):
                if s.pool.held[0]:
                    s.pool.finish(service_s=0.0025)
                await settle()
            assert first.done()
            assert loose.done()
            assert loose.exception() is None

    run(body())


def test_loop_lag_probes_one_at_a_time_and_at_most_every_interval() -> None:
    async def body() -> None:
        clock, seen = FakeClock(), []
        lag = LoopLag(asyncio.get_running_loop(), clock, seen.append, every_s=0.005)
        lag.sample(clock())
        lag.sample(clock())  # one probe waits already
        clock.advance(0.040)  # the loop is busy for 40 ms before the probe runs
        await asyncio.sleep(0)
        assert seen == [pytest.approx(LAG_HOPS * 0.2 * 0.040)]
        lag.sample(clock())
        await asyncio.sleep(0)
        lag.sample(clock() + 0.001)  # within 5 ms of the last probe
        await asyncio.sleep(0)
        assert len(seen) == 2
        assert seen[1] < seen[0]  # a probe that ran at once brings the level down

    run(body())


async def answer_windows(s: Served, window_s: float, compute_s: float,
                         loop_delay_s: float = 0.0) -> None:
    """Two feedback windows of three batches of 8, each computed in `compute_s`, their clients
    reached `loop_delay_s` after the answers are set."""
    for _ in range(2):
        for _ in range(3):
            tasks = await s.infer(*range(8))
            await s.tick(compute_s)
            s.pool.finish(service_s=compute_s)
            s.clock.advance(loop_delay_s)
            await settle()
            assert all(t.done() for t in tasks)
        await s.tick(window_s)


def test_late_answers_shrink_the_share_of_the_deadline_admission_plans_with(
        tmp_path: Path) -> None:
    async def body() -> None:
        async with probed(tmp_path) as s:
            feedback = s.model.scheduler.slo_feedback
            assert feedback is not None
            assert feedback.share == 1.0
            # two windows of 24 answers, every one 45 ms: inside the SLO but past its 40 ms aim
            await answer_windows(s, feedback.window_s, compute_s=0.045)
            assert feedback.share < 1.0
            assert s.engine.metrics.slo_requests.labels("m", "yes")._value.get() == 48

    run(body())


def test_the_feedback_judges_answers_as_late_as_their_clients_see_them(tmp_path: Path) -> None:
    async def body() -> None:
        async with probed(tmp_path) as s:
            feedback = s.model.scheduler.slo_feedback
            assert feedback is not None
            # two windows of 24 answers, computed in 20 ms: on time, but the loop reaches
            # their clients 25 ms later
            await answer_windows(s, feedback.window_s, compute_s=0.020, loop_delay_s=0.025)
            assert feedback.share < 1.0
            # the server-side SLO counter still counts them within the SLO, as answered
            assert s.engine.metrics.slo_requests.labels("m", "yes")._value.get() == 48

    run(body())

"""A laddered model never turns a finite answer into NaN or infinity by moving down: an
unpinned request a cheaper rung answers with non-finite floats is computed again on the top
rung; a pinned request, and the top rung's own answer, stand as computed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from surge.engine.ladder import all_finite
from surge.engine.route import VariantRoute
from surge.errors import DeadlineExceededError
from surge.workers.messages import BatchDone
from surge.workers.pool import BatchResult
from tests.unit.engine.fakes import FakePool, settle
from tests.unit.engine.test_ladder_serving import LADDER, Ladder, laddered, run


def answer_non_finite(pool: FakePool, value: float = np.inf) -> None:
    """The pool's held batch answered with `value` everywhere (an fp16 rung past 65504)."""
    batch = pool.held[0].popleft()
    x = np.concatenate([r.inputs["x"] for r in batch.requests])
    done = BatchDone(batch.id, input_ns=1_000, infer_ns=1_000, output_ns=1_000)
    pool.events.on_done(batch, {"y": np.full_like(x, value)}, None, BatchResult(done, 0.0007))


def all_on_fast(s: Ladder) -> None:
    s.served.controller._move(s.served.controller.depth)
    assert s.served.controller.shares() == {"original": 0.0, "fast": 1.0}


def recomputed(s: Ladder, rung: str = "fast") -> float:
    return s.engine.metrics.ladder_recomputed.labels("m", rung)._value.get()


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_an_unpinned_non_finite_answer_of_a_cheaper_rung_is_computed_on_the_top(
        tmp_path: Path, value: float) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            all_on_fast(s)
            route = VariantRoute()
            task = await s.infer(1.0, route)
            answer_non_finite(s.pool("fast"), value)
            await settle()
            assert not task.done()  # waiting for the original's answer
            s.finish_all()
            await settle()
            np.testing.assert_array_equal(task.result()["y"], np.full((1, 4), 3.0, np.float32))
            assert route.served == "original"
            assert recomputed(s) == 1

    run(body())


def test_a_finite_answer_of_a_cheaper_rung_is_not_computed_again(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            all_on_fast(s)
            before = len(s.pool("original").dispatched)
            route = VariantRoute()
            task = await s.infer(1.0, route)
            s.finish_all()
            await settle()
            assert task.result()["y"][0, 0] == 3.0
            assert route.served == "fast"
            assert len(s.pool("original").dispatched) == before
            assert recomputed(s) == 0

    run(body())


def test_a_pinned_request_keeps_its_rungs_non_finite_answer(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            route = VariantRoute(variant="fast")
            task = await s.infer(1.0, route)
            answer_non_finite(s.pool("fast"))
            await settle()
            assert np.isinf(task.result()["y"]).all()
            assert route.served == "fast"
            assert recomputed(s) == 0

    run(body())


def test_the_top_rungs_non_finite_answer_is_the_models_answer(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            before = len(s.pool("original").dispatched)
            route = VariantRoute()
            task = await s.infer(1.0, route)
            answer_non_finite(s.pool("original"), np.nan)
            await settle()
            assert np.isnan(task.result()["y"]).all()
            assert route.served == "original"
            assert len(s.pool("original").dispatched) == before + 1

    run(body())


def test_a_recomputation_past_the_deadline_is_a_deadline_error(tmp_path: Path) -> None:
    async def body() -> None:
        async with laddered(tmp_path) as s:
            all_on_fast(s)
            task = await s.infer(1.0, VariantRoute(), timeout_us=20_000)
            s.clock.advance(0.03)
            answer_non_finite(s.pool("fast"))
            await settle()
            with pytest.raises(DeadlineExceededError, match="'fast' answered NaN or infinite"):
                task.result()

    run(body())


@pytest.mark.parametrize("queue", ["{timeout_action: delay}", "{allow_timeout_override: false}",
                                   "{priorities: {0: {timeout_action: delay}}}"])
def test_a_recomputation_past_the_timeout_follows_a_queue_that_keeps_late_requests(
        tmp_path: Path, queue: str) -> None:
    """Under timeout_action delay a passed deadline is answered late, and with
    allow_timeout_override false the request's own timeout is not its deadline: neither is
    a 504 at the second computation (it was, from the request's own timeout)."""
    async def body() -> None:
        async with laddered(tmp_path, LADDER + f"queue: {queue}\n") as s:
            all_on_fast(s)
            route = VariantRoute()
            task = await s.infer(1.0, route, timeout_us=20_000)
            s.clock.advance(0.03)
            answer_non_finite(s.pool("fast"))
            await settle()
            s.finish_all()
            await settle()
            np.testing.assert_array_equal(task.result()["y"], np.full((1, 4), 3.0, np.float32))
            assert route.served == "original"

    run(body())


def test_all_finite_checks_float_outputs_only() -> None:
    assert all_finite({"y": np.ones(3, np.float32), "k": np.array([-1], np.int64)})
    assert not all_finite({"y": np.array([1.0, np.nan], np.float16)})
    assert not all_finite({"a": np.ones(2), "b": np.array([-np.inf], np.float64)})
    assert all_finite({"t": np.array([b"x"], object), "e": np.zeros((0, 4), np.float32)})


def test_a_non_finite_answer_while_the_ladder_is_evicted_is_still_computed_on_the_top(
        tmp_path: Path) -> None:
    """An eviction (or unload, or the old ladder of a reload) drains the cheaper rungs before
    the top one: before, the top rung stopped first and refused the second computation of an
    accepted request (503 "not accepting requests")."""
    async def body() -> None:
        async with laddered(tmp_path) as s:
            all_on_fast(s)
            route = VariantRoute()
            task = await s.infer(1.0, route)
            evicting = asyncio.create_task(s.engine.evict("m"))
            await settle()
            answer_non_finite(s.pool("fast"))
            for _ in range(20):
                s.finish_all()
                await settle()
            assert await evicting
            np.testing.assert_array_equal(task.result()["y"], np.full((1, 4), 3.0, np.float32))
            assert route.served == "original"
            assert s.pool("original").stopped

    run(body())

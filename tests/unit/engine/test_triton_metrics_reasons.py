"""Triton's `reason` of nv_inference_request_failure (REJECTED, CANCELED, BACKEND, OTHER), from
where a served model's requests fail, and the nv_cache_* series shown only for the models that
enable the response cache, on one front end and in the sums of several."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from prometheus_client import CollectorRegistry, multiprocess, values

from surge.engine.failures import failure_reason
from surge.engine.interface import InferenceEngine
from surge.engine.ladder import LadderCounters, ServedLadder
from surge.engine.stats import FAIL_REASONS, Counters
from surge.engine.triton_metrics import TritonSource
from surge.errors import (
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    QueueFullError,
    ServingError,
    WorkerCrashedError,
)
from surge.server.metrics_port import MetricsApp
from surge.workers.transport import SlotSpaceError
from tests.unit.engine.fakes import serving, settle
from tests.unit.engine.test_triton_metrics import (
    _app,
    _Engine,
    _render_shared,
    _scrape,
    _scraped,
    _stats,
    _value,
)

FAILURE = "nv_inference_request_failure"


def _reasons(text: str, model: str = "m") -> dict[str, int]:
    return {why: _value(text, FAILURE, model=model, reason=why) for why in FAIL_REASONS}


@pytest.mark.parametrize(("error", "reason"), [
    (QueueFullError("queue full"), "REJECTED"),
    (QueueFullError("too late", reason="predicted_miss"), "REJECTED"),
    (DeadlineExceededError("deadline exceeded after 2 ms in the queue"), "REJECTED"),
    (asyncio.CancelledError(), "CANCELED"),
    (ServingError("model 'm' failed: ValueError: bad"), "BACKEND"),
    (WorkerCrashedError("worker 0 died"), "BACKEND"),
    (RuntimeError("runner raised"), "BACKEND"),
    (InputError("preprocessing refused row 2"), "BACKEND"),
    (ModelNotReadyError("model 'm' was stopped"), "OTHER"),
    (SlotSpaceError("the batch does not fit"), "OTHER"),
])
def test_each_error_a_request_fails_with_has_its_reason(error: BaseException,
                                                        reason: str) -> None:
    assert failure_reason(error) == reason


def test_failures_no_reason_claims_count_as_other() -> None:
    """A pipeline counts failures without a reason."""
    counters = Counters()
    counters.count_failure(1_000, "BACKEND")
    counters.count_failure(1_000, "REJECTED")
    counters.fail.add(5_000)  # a pipeline's failure: its steps' reasons are not its own
    stats = counters.snapshot("m", 1)
    assert [stats.failures(why) for why in FAIL_REASONS] == [1, 0, 1, 1]
    assert stats.fail == (3, 7_000)


def test_a_ladders_statistics_sum_its_rungs_reasons() -> None:
    """A laddered model's failures keep the reasons its rungs counted (they read OTHER)."""
    rungs = {}
    for rung, reasons in (("original", ["BACKEND", "REJECTED"]), ("int8", ["REJECTED"])):
        counters = Counters()
        for reason in reasons:
            counters.count_failure(1_000, reason)
        rungs[rung] = SimpleNamespace(counters=counters)
    controller = SimpleNamespace(predicted_p99=float("inf"), shares=dict, level=0, excluded=())
    ladder = cast(ServedLadder, SimpleNamespace(rungs=rungs, controller=controller))
    stats = LadderCounters(ladder).snapshot("m", 1)
    assert {why: stats.failures(why) for why in FAIL_REASONS} == {
        "REJECTED": 2, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}
    assert stats.fail == (3, 3_000)


def test_each_way_a_served_request_fails_counts_under_its_reason(tmp_path: Path) -> None:
    """Refused at admission and expired in the queue (REJECTED), left by its client
    (CANCELED), failed by the model (BACKEND), still queued when the model stops (OTHER)."""
    async def body() -> None:
        config = "max_batch_size: 1\nqueue: {max_size: 1}\n"
        async with serving(tmp_path, config, depth=1) as s:
            (computing,) = await s.infer(1)
            (late,) = await s.infer(2, timeout_us=1000)
            (refused,) = await s.infer(3)
            with pytest.raises(QueueFullError):
                await refused
            await s.tick(0.002)
            with pytest.raises(DeadlineExceededError):
                await late
            (left,) = await s.infer(4)
            left.cancel()
            await settle()
            s.pool.fail()
            with pytest.raises(RuntimeError):
                await computing
            source = TritonSource(s.engine, cache=False, shared=False)
            text = await _scraped(MetricsApp(s.engine.metrics.registry, source))
            assert _reasons(text) == {"REJECTED": 2, "CANCELED": 1, "BACKEND": 1, "OTHER": 0}
            assert s.engine.stats("m").fail[0] == 4
            (running,) = await s.infer(5)
            (queued,) = await s.infer(6)
            await s.model.stop(grace_s=0.0)
            for task in (running, queued):
                with pytest.raises((ModelNotReadyError, WorkerCrashedError)):
                    await task
            assert s.model.counters.fail_reasons["OTHER"] == 1  # the queued one

    asyncio.run(body())


def test_cache_counters_only_for_the_models_that_enable_the_cache() -> None:
    engine = _Engine({("c", 1): _stats("c", 1), ("u", 1): _stats("u", 1, cached=False)})
    text = _scrape(_app(engine, cache=True))
    assert _value(text, "nv_cache_num_hits_per_model", model="c") == 3
    assert _value(text, "nv_cache_miss_duration_per_model", model="c") == 51
    assert not [row for row in text.splitlines()
                if row.startswith("nv_cache_") and 'model="u"' in row]
    assert _value(text, "nv_inference_count", model="u") == 12  # the rest of its series stay


def test_no_cache_family_when_no_model_enables_the_cache() -> None:
    text = _scrape(_app(_Engine({("u", 1): _stats("u", 1, cached=False)}), cache=True))
    assert "nv_cache_" not in text
    assert _value(text, "nv_inference_request_success", model="u") == 7


def test_a_served_model_says_whether_its_config_enables_the_cache(tmp_path: Path) -> None:
    async def body() -> tuple[bool, bool]:
        async with serving(tmp_path / "on", "response_cache: true\n") as on:
            cached = on.engine.stats("m").response_cache
        async with serving(tmp_path / "off", "max_batch_size: 1\n") as off:
            return cached, off.engine.stats("m").response_cache

    assert asyncio.run(body()) == (True, False)


def test_several_front_ends_sum_each_reason_and_leave_uncached_models_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for pid, scale in ((401, 1), (402, 2)):
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda p=pid: p))
        engine = _Engine({("c", 1): _stats("c", 1, scale),
                          ("u", 1): _stats("u", 1, scale, cached=False)})
        asyncio.run(TritonSource(cast(InferenceEngine, engine), True, shared=True).publish())
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    text = _render_shared(registry)
    # Each front end: `scale` REJECTED of 2 * scale failures, the rest OTHER.
    assert _reasons(text, "u") == {"REJECTED": 1 + 2, "CANCELED": 0, "BACKEND": 0,
                                   "OTHER": 1 + 2}
    assert _value(text, "nv_cache_num_hits_per_model", model="c") == 3 + 6
    assert 'nv_cache_num_hits_per_model{model="u"' not in text

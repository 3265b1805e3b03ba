"""The margin admission adds to its predictions: the p99 of how much later than predicted the
recent answers reached their clients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from surge.errors import QueueFullError
from surge.scheduler import Request, Scheduler, SchedulerConfig, shape_key
from surge.scheduler.latency import CompletionMargin

_ids = itertools.count(1)


def test_the_margin_is_the_p99_of_the_recent_errors() -> None:
    margin = CompletionMargin(window_s=1.0, refresh_s=0.0)
    for i in range(100):  # answers 0..99 ms after their predictions
        margin.observe(i / 1e3, 0.5)
    assert margin.value(0.5) == pytest.approx(0.098)  # nearest rank: 99 of the 100 reach it
    margin.observe(5.0, 0.6)  # one answer seconds late moves the p99 by one rank only
    assert margin.value(0.6) == pytest.approx(0.099)


def test_answers_earlier_than_predicted_ask_no_margin() -> None:
    margin = CompletionMargin(refresh_s=0.0)
    for _ in range(50):
        margin.observe(-0.004, 0.0)
    assert margin.value(0.0) == 0.0


def test_errors_age_out_so_a_margin_that_refused_everything_comes_back() -> None:
    margin = CompletionMargin(window_s=1.0, refresh_s=0.0)
    for i in range(50):
        margin.observe(0.200, i * 0.01)  # every answer 200 ms late, then none at all
    assert margin.value(0.6) == pytest.approx(0.200)
    assert margin.value(1.6) == 0.0  # the last one is more than a second old


def test_the_quantile_is_worked_out_at_most_every_refresh() -> None:
    margin = CompletionMargin(refresh_s=0.05)
    margin.observe(0.010, 0.0)
    assert margin.value(0.0) == pytest.approx(0.010)
    margin.observe(0.030, 0.01)
    assert margin.value(0.02) == pytest.approx(0.010)  # within 50 ms of the last look
    assert margin.value(0.06) == pytest.approx(0.030)


def test_settings_are_checked() -> None:
    for bad in ({"window_s": 0.0}, {"quantile": 0.0}, {"quantile": 1.5}, {"refresh_s": -1.0},
                {"max_samples": 0}):
        with pytest.raises(ValueError, match="need window_s > 0"):
            CompletionMargin(**bad)  # type: ignore[arg-type]


def req(deadline: float, now: float = 0.0) -> Request:
    inputs = {"x": np.zeros((1, 4), np.float32)}
    return Request(next(_ids), inputs, 1, shape_key(inputs, True), now, deadline)


def warm(slo_s: float | None) -> Scheduler:
    """A scheduler that measured one batch of 1 at 20 ms."""
    s = Scheduler(SchedulerConfig(max_batch_size=16, max_queue_delay_s=0.0, slo_s=slo_s))
    first = s.add(req(10.0, -10.0), -10.0)
    batch = s.next_batch(-10.0, 1)
    assert batch is not None
    assert batch.requests == (first,)
    s.complete(batch, {"y": np.zeros((1, 1), np.float32)}, -9.0, 0.020)  # 20 ms an item
    return s


def test_admission_adds_the_margin_only_with_an_slo() -> None:
    for slo_s, refused in ((None, False), (0.050, True)):
        s = warm(slo_s)
        if s.slo_feedback is not None:
            for _ in range(10):
                s.slo_feedback.observe(0.030, -0.1)  # answers came 30 ms after predicted
        s.add(req(10.0), 0.0)  # queued ahead: with it, a batch of 2 is predicted at 40 ms
        if refused:  # 40 + 30 ms against 60 ms of deadline: refused
            with pytest.raises(QueueFullError, match="70.0 ms"):
                s.add(req(0.060), 0.0)
        else:
            s.add(req(0.060), 0.0)


def test_requests_carry_their_predicted_completion_only_with_an_slo() -> None:
    assert warm(None).add(req(10.0), 0.0).predicted is None
    admitted = warm(0.050).add(req(10.0), 0.0)
    assert admitted.predicted == pytest.approx(0.020)  # a batch of 1 on the idle worker

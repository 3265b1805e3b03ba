"""Admission's share of the deadline, steered by whether the answers met the SLO (AIMD)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from surge.errors import QueueFullError
from surge.scheduler import Request, Scheduler, SchedulerConfig, shape_key
from surge.scheduler.latency import SloFeedback

_ids = itertools.count(1)
LATE = 10**6  # early cuts off: these tests are about whole windows


def answers(feedback: SloFeedback, start: float, late: int, on_time: int) -> float:
    """One 0.5-s window of answers; returns when the next window starts."""
    for i in range(late + on_time):
        feedback.observe(i >= late, start + 0.001 * i)
    return start + 0.5


def test_late_answers_cut_the_share_and_timely_ones_grow_it_back() -> None:
    feedback = SloFeedback(window_s=0.5, target_miss=0.01, decrease=0.8, increase=0.05,
                           early_misses=LATE)
    at = answers(feedback, 0.0, late=10, on_time=90)  # 10% late
    at = answers(feedback, at, late=0, on_time=100)  # closes the first window
    assert feedback.share == pytest.approx(0.8)
    at = answers(feedback, at, late=0, on_time=100)
    assert feedback.share == pytest.approx(0.85)
    for _ in range(10):
        at = answers(feedback, at, late=0, on_time=100)
    assert feedback.share == 1.0  # never more than the whole deadline


def test_the_share_has_a_floor_and_small_windows_decide_nothing() -> None:
    feedback = SloFeedback(window_s=0.5, floor=0.3, min_answers=20, early_misses=LATE)
    at = 0.0
    for _ in range(20):
        at = answers(feedback, at, late=50, on_time=0)
    assert feedback.share == pytest.approx(0.3)
    quiet = SloFeedback(window_s=0.5, min_answers=20, early_misses=LATE)
    at = answers(quiet, 0.0, late=10, on_time=0)  # ten answers, all late: too few to judge
    answers(quiet, at, late=0, on_time=1)
    assert quiet.share == 1.0


def test_a_miss_rate_between_half_and_the_target_holds_the_share() -> None:
    feedback = SloFeedback(window_s=0.5, target_miss=0.02, decrease=0.8, early_misses=LATE)
    at = answers(feedback, 0.0, late=10, on_time=90)
    at = answers(feedback, at, late=3, on_time=197)  # 10% cuts; then 1.5%: between, held
    answers(feedback, at, late=0, on_time=1)
    assert feedback.share == pytest.approx(0.8)


def req(deadline: float, now: float = 0.0) -> Request:
    inputs = {"x": np.zeros((1, 4), np.float32)}
    return Request(next(_ids), inputs, 1, shape_key(inputs, True), now, deadline)


def test_admission_plans_within_the_share_only_with_an_slo() -> None:
    for slo_s, refused in ((None, False), (0.050, True)):
        s = Scheduler(SchedulerConfig(max_batch_size=16, max_queue_delay_s=0.0, slo_s=slo_s))
        warm = s.add(req(10.0, -10.0), -10.0)
        batch = s.next_batch(-10.0, 1)
        assert batch is not None
        assert batch.requests == (warm,)
        s.complete(batch, {"y": np.zeros((1, 1), np.float32)}, -9.0, 0.020)  # 20 ms an item
        if s.slo_feedback is not None:
            s.slo_feedback.value(0.0)  # its windows caught up to now (none of them cut it)
            s.slo_feedback.share = 0.5
        s.add(req(10.0), 0.0)  # queued ahead: with it, a batch of 2 is predicted at 40 ms
        if refused:  # 60 ms of deadline, half of it planned: refused
            with pytest.raises(QueueFullError):
                s.add(req(0.060), 0.0)
        else:
            s.add(req(0.060), 0.0)


def test_a_share_that_refuses_everything_grows_back_with_time_alone() -> None:
    feedback = SloFeedback(window_s=0.25, decrease=0.5, increase=0.05, floor=0.3)
    at = 0.0
    for _ in range(4):  # every answer late: down to the floor
        at = answers(feedback, at, late=40, on_time=0) - 0.25
    assert feedback.value(at) == pytest.approx(0.3)
    assert feedback.value(at + 0.25 * 5) == pytest.approx(0.55)  # five windows, no answer
    few = SloFeedback(window_s=0.25, increase=0.05, min_answers=20)
    few.share = 0.5
    answers(few, 0.0, late=0, on_time=5)  # five answers, all on time: grows
    assert few.value(0.3) == pytest.approx(0.55)


def test_misses_past_the_early_count_cut_at_once_and_start_a_new_window() -> None:
    feedback = SloFeedback(window_s=0.25, target_miss=0.01, decrease=0.5, early_misses=5)
    for i in range(100):
        feedback.observe(True, 0.001 * i)
    for i in range(4):
        feedback.observe(False, 0.1 + 0.001 * i)
    assert feedback.share == 1.0  # four misses: not yet
    feedback.observe(False, 0.105)
    assert feedback.share == 0.5  # the fifth, 5% of the window: cut before the window's end


def test_answers_to_requests_admitted_before_a_cut_cut_nothing_more() -> None:
    feedback = SloFeedback(window_s=0.25, target_miss=0.01, decrease=0.5, early_misses=5,
                           floor=0.1)
    for i in range(5):
        feedback.observe(False, 0.1 + 0.001 * i, arrival=0.05)
    assert feedback.share == 0.5
    for i in range(20):  # the rest of what was in flight, as late: admitted under the old share
        feedback.observe(False, 0.11 + 0.001 * i, arrival=0.06)
    assert feedback.share == 0.5
    for i in range(5):  # admitted after the cut, and still late: a new cut
        feedback.observe(False, 0.2 + 0.001 * i, arrival=0.15)
    assert feedback.share == 0.25

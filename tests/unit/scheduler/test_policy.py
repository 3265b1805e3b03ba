"""The batching policies as pure functions, with a fake latency model (a + b * n)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from surge.scheduler.policy import QueueView, slo_wait, static_due


def line(a: float = 0.002, b: float = 0.0005) -> Callable[[int], float]:
    return lambda n: a + b * n


SLO = 0.050


def test_dispatches_at_once_when_nothing_else_is_coming() -> None:
    assert slo_wait(QueueView(1, 0.0, None, 1), line(), SLO, 32) == 0.0  # no rate known
    # one request every 100 ms: a batch of 1 (2.5 ms) keeps pace, waiting is pure latency
    assert slo_wait(QueueView(1, 0.0, 0.100, 1), line(), SLO, 32) == 0.0


def test_waits_for_more_when_the_batch_cannot_keep_pace() -> None:
    # one request every 0.5 ms (2000/s): a batch of 1 takes 2.5 ms, far behind
    wait = slo_wait(QueueView(1, 0.0, 0.0005, 1), line(), SLO, 32)
    assert wait > 0.0


def test_an_idle_instance_gets_the_queue_at_once_whatever_the_load() -> None:
    busy, idle = QueueView(1, 0.0, 0.0005, 1), QueueView(1, 0.0, 0.0005, 1, idle=1)
    assert slo_wait(busy, line(), SLO, 32) > 0.0
    assert slo_wait(idle, line(), SLO, 32) == 0.0


def test_batches_grow_with_load() -> None:
    def size_it_goes_at(gap: float) -> int:
        for items in range(1, 33):
            if slo_wait(QueueView(items, 0.0, gap, 1), line(), SLO, 32) == 0.0:
                return items
        return 33

    sizes = [size_it_goes_at(gap) for gap in (0.01, 0.002, 0.001, 0.0006)]
    assert sizes == sorted(sizes)
    assert sizes[0] == 1
    assert sizes[-1] > 4


def test_more_workers_keep_pace_with_smaller_batches() -> None:
    view_one, view_four = QueueView(2, 0.0, 0.001, 1), QueueView(2, 0.0, 0.001, 4)
    assert slo_wait(view_one, line(), SLO, 32) > 0.0
    assert slo_wait(view_four, line(), SLO, 32) == 0.0


@pytest.mark.parametrize("age", [0.0, 0.010, 0.030, 0.044, 0.047])
def test_never_waits_past_the_slo(age: float) -> None:
    view = QueueView(3, age, 0.0002, 1)
    wait = slo_wait(view, line(), SLO, 32)
    if age + 0.0002 + line()(4) > SLO:  # one more arrival would already be too late
        assert wait == 0.0
    else:  # waiting `wait`, then one more arrival and its batch, still ends within the SLO
        assert wait > 0.0
        assert age + wait + 0.0002 + line()(4) <= SLO + 1e-12


def test_full_batch_or_unknown_latency_goes_at_once() -> None:
    assert slo_wait(QueueView(32, 0.0, 0.0001, 1), line(), SLO, 32) == 0.0
    assert slo_wait(QueueView(3, 0.0, 0.0001, 1), lambda n: None, SLO, 32) == 0.0


def test_static_delay_is_kept_unless_the_next_request_comes_after_it() -> None:
    assert static_due(0.002, 0.002, None, 0.0)  # the delay ran out
    assert not static_due(0.0, 0.002, None, 0.0)  # no rate known: wait as before
    assert static_due(0.0, 0.002, 0.007, 0.0)  # one client every 7 ms: nothing to wait for
    assert not static_due(0.0, 0.002, 0.0005, 0.0)  # the next one is due in 0.5 ms
    assert not static_due(0.001, 0.002, 0.007, 0.008)  # overdue: it may come any moment

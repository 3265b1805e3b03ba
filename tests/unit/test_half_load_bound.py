"""benchmarks/half_load_bound.py: the ideal greedy batcher whose p50 is the half-load floor."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.unit.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bound() -> ModuleType:
    return load_benchmark("half_load_bound")


TIMES = {1: 0.002, 2: 0.003, 4: 0.005, 8: 0.009, 16: 0.017}  # 2 ms + 1 ms an item after


def test_a_rare_request_waits_for_nothing_but_its_own_batch(bound: ModuleType) -> None:
    assert bound.ideal_p50_ms(TIMES, 1, rate=1.0, max_batch=16) == pytest.approx(2.0)


def test_busy_servers_queue_and_batch(bound: ModuleType) -> None:
    # A batch of one every 2 ms could serve 500/s: at 450/s requests queue behind each other.
    one = bound.ideal_p50_ms(TIMES, 1, rate=450.0, max_batch=16)
    assert 2.5 < one < 10.0
    # A second instance halves the load on each: less queueing, never below the batch of one.
    two = bound.ideal_p50_ms(TIMES, 2, rate=450.0, max_batch=16)
    assert 2.0 <= two < one


def test_batch_times_between_the_measured_sizes_are_interpolated(bound: ModuleType) -> None:
    assert bound.time_of(TIMES, 3) == pytest.approx(0.004)
    assert bound.time_of(TIMES, 12) == pytest.approx(0.013)

"""The online latency line (a + b * n) and the arrival rate, with plain numbers."""

from __future__ import annotations

import random

import pytest

from surge.scheduler.estimate import InstanceTimes
from surge.scheduler.latency import ArrivalRate, LinearLatency


def test_line_recovers_a_and_b_from_exact_samples() -> None:
    line = LinearLatency()
    for n in (1, 4, 8, 16, 32):
        line.record(n, 0.002 + 0.0005 * n)
    a, b = line.coefficients or (0.0, 0.0)
    assert a == pytest.approx(0.002)
    assert b == pytest.approx(0.0005)
    assert line.predict(64) == pytest.approx(0.002 + 0.032)


def test_line_forgets_batches_outside_its_window() -> None:
    line = LinearLatency(window=4)
    for n in (1, 8, 1, 8):
        line.record(n, 0.001 * n)
    for n in (1, 8, 1, 8):  # twice as slow now: the old samples must not count
        line.record(n, 0.002 * n)
    assert line.predict(8) == pytest.approx(0.016)


def test_line_with_one_size_is_proportional_and_never_falls() -> None:
    line = LinearLatency()
    assert line.predict(1) is None
    line.record(4, 0.008)
    assert line.predict(8) == pytest.approx(0.016)
    noisy = LinearLatency()
    noisy.record(1, 0.003)
    noisy.record(2, 0.002)  # noise over a narrow range: the slope is clipped at zero
    a, b = noisy.coefficients or (0.0, -1.0)
    assert b == 0.0
    assert a == pytest.approx(0.0025)


def _fit_of(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """The window's least-squares line worked out from the samples themselves, clipped as the
    running fit clips it."""
    count = len(samples)
    mean_n = sum(n for n, _ in samples) / count
    mean_t = sum(t for _, t in samples) / count
    var_n = sum((n - mean_n) ** 2 for n, _ in samples)
    if var_n == 0.0:
        return 0.0, mean_t / mean_n
    b = max(0.0, sum((n - mean_n) * (t - mean_t) for n, t in samples) / var_n)
    a = mean_t - b * mean_n
    return (0.0, mean_t / mean_n) if a < 0.0 else (a, b)


@pytest.mark.parametrize("window", [2, 5, 64])
def test_the_running_fit_matches_the_window_worked_out_afresh(window: int) -> None:
    # Thousands of batches through a small window: the sums it keeps must not drift from what
    # the samples in the window say, across sizes that repeat (no slope) and that spread.
    rng = random.Random(window)
    line = LinearLatency(window=window)
    kept: list[tuple[int, float]] = []
    for step in range(5_000):
        size = 8 if step % 1000 < 100 else rng.choice((1, 2, 3, 16, 64))
        seconds = 1e-4 + 2e-5 * size * rng.uniform(0.5, 1.5) + rng.expovariate(1e3) * 1e-2
        line.record(size, seconds)
        kept = [*kept, (size, seconds)][-window:]
        a, b = line.coefficients or (-1.0, -1.0)
        want_a, want_b = _fit_of(kept)
        assert a == pytest.approx(want_a, rel=1e-6, abs=1e-12)
        assert b == pytest.approx(want_b, rel=1e-6, abs=1e-12)


def test_line_refuses_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="batch size"):
        LinearLatency().record(0, 0.001)


def test_instance_lines_answer_for_the_slowest_live_instance() -> None:
    times = InstanceTimes(live=2)
    for n in (1, 8):
        times.record(0, n, 0.001 + 0.0001 * n)
        times.record(1, n, 0.002 + 0.0002 * n)
    assert times.fitted(16) == pytest.approx(0.002 + 0.0032)
    assert set(times.lines()) == {0, 1}
    assert times.lines()[0] == pytest.approx((0.001, 0.0001))


def test_arrival_rate_follows_gaps_and_sees_a_stream_stop() -> None:
    arrivals = ArrivalRate()
    assert arrivals.rate(0.0) == 0.0
    assert arrivals.gap(0.0) is None
    for i in range(5):
        arrivals.arrive(i * 0.01)
    assert arrivals.rate(0.04) == pytest.approx(100.0)
    assert arrivals.typical_gap == pytest.approx(0.01)
    assert arrivals.rate(1.04) == pytest.approx(1.0)  # nothing for a second: about 1/s
    assert arrivals.since_last(1.04) == pytest.approx(1.0)


def test_arrival_rate_sees_a_surge_after_an_idle_spell_within_a_few_requests() -> None:
    arrivals = ArrivalRate(window=8)
    arrivals.arrive(0.0)
    for i in range(5):  # 10 s of nothing, then 1000 requests/s
        arrivals.arrive(10.0 + i * 0.001)
    assert arrivals.rate(10.004) == pytest.approx(1000.0)


def test_arrival_rate_refuses_a_bad_window() -> None:
    with pytest.raises(ValueError, match="window"):
        ArrivalRate(window=0)


def test_a_size_between_two_measured_ones_is_interpolated() -> None:
    times = InstanceTimes()
    times.record(0, 1, 0.002)
    times.record(0, 64, 0.034)  # as the load-time probe leaves it: only 1 and the full size
    assert times.estimate(2) == pytest.approx(0.002 + 0.032 / 63)
    assert times.estimate(33) == pytest.approx(0.002 + 0.032 * 32 / 63)

"""The live line of `surge bench`: parsed from the server's Prometheus text, differenced per
second."""

from __future__ import annotations

import pytest

from surge.bench.live import MetricsSample, live_line, quantile
from surge.engine.metrics import SurgeMetrics


def scrape(metrics: SurgeMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_parse_and_difference_two_scrapes_of_the_real_metrics() -> None:
    metrics = SurgeMetrics()
    before = MetricsSample.parse(scrape(metrics), "m")
    for _ in range(98):
        metrics.observe_request("m", "success", 0.004)
    metrics.observe_request("m", "success", 0.04)
    metrics.observe_request("m", "success", 0.2)
    metrics.observe_request("other", "success", 0.001)  # another model: not counted
    metrics.slo_requests.labels("m", "yes").inc(99)
    metrics.shed.labels("m", "predicted_miss").inc(3)
    metrics.shed.labels("m", "deadline").inc(1)
    metrics.variant_requests.labels("m", "original").inc(25)
    metrics.variant_requests.labels("m", "int8").inc(75)
    after = MetricsSample.parse(scrape(metrics), "m")
    assert after.answered == 100
    line = live_line(before, after, 2.0, 7)
    assert line.startswith("   7s")
    assert "50.0 req/s" in line
    assert "goodput    49.5/s" in line
    assert "shed     4 (deadline 1, predicted_miss 3)" in line
    assert "mix int8 75% original 25%" in line
    assert "p99    50.0 ms" in line  # rank 99 of 100 is the top of the 25-50 ms bucket


def test_quantile_interpolates_inside_a_bucket() -> None:
    buckets = [(0.01, 50.0), (0.02, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.75) == pytest.approx(0.015)
    assert quantile([], 0.99) is None
    assert quantile([(0.01, 0.0), (float("inf"), 0.0)], 0.99) is None


def test_an_idle_second_shows_no_p99() -> None:
    sample = MetricsSample(answered=5.0)
    assert "p99       - ms" in live_line(sample, sample, 1.0, 1)
    assert "0.0 req/s" in live_line(sample, sample, 1.0, 1)

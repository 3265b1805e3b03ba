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


def test_the_p99_is_of_the_answered_requests_not_the_quick_refusals() -> None:
    """Under overload most requests are refused in microseconds (503): timed with the answers,
    they would show a p99 of a fraction of a millisecond while every answer took 40 ms."""
    metrics = SurgeMetrics()
    before = MetricsSample.parse(scrape(metrics), "m")
    for _ in range(20):
        metrics.observe_request("m", "success", 0.04)
    for outcome in ("rejected", "expired", "bad_request"):
        for _ in range(1000):  # 20 answers: under 1% of all requests
            metrics.observe_request("m", outcome, 0.0003)
    metrics.observe_request("m", "worker_crashed", 0.0003)
    after = MetricsSample.parse(scrape(metrics), "m")
    assert after.answered == 20
    p99 = float(live_line(before, after, 1.0, 1).split("p99")[1].split("ms")[0])
    assert 25.0 < p99 <= 50.0  # in the 25-50 ms bucket of the answers


def test_a_server_without_the_outcome_label_still_gives_a_p99() -> None:
    text = ('surge_request_duration_seconds_bucket{le="0.01",model="m"} 5.0\n'
            'surge_request_duration_seconds_bucket{le="+Inf",model="m"} 5.0\n')
    sample = MetricsSample.parse(text, "m")
    assert sample.buckets == ((0.01, 5.0), (float("inf"), 5.0))


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


def test_a_model_without_an_slo_shows_no_goodput() -> None:
    """It has no SLO to be on time for: 0/s read as nothing on time."""
    metrics = SurgeMetrics()
    before = MetricsSample.parse(scrape(metrics), "m")
    for _ in range(10):
        metrics.observe_request("m", "success", 0.004)
    metrics.slo_requests.labels("laddered", "yes").inc(5)  # another model's SLO
    after = MetricsSample.parse(scrape(metrics), "m")
    assert not after.has_slo
    line = live_line(before, after, 1.0, 1)
    assert "goodput       -" in line
    assert "10.0 req/s" in line


def test_a_model_with_an_slo_none_on_time_shows_zero_goodput() -> None:
    metrics = SurgeMetrics()
    before = MetricsSample.parse(scrape(metrics), "m")
    metrics.slo_requests.labels("m", "no").inc(7)
    after = MetricsSample.parse(scrape(metrics), "m")
    assert "goodput     0.0/s" in live_line(before, after, 1.0, 1)

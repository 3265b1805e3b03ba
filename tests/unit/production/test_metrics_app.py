"""The metrics port's app: a slow rendering runs off the event loop, once for all the scrapes
that arrive while it runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from surge.server.metrics_port import MetricsApp


class _Slow(Collector):
    def __init__(self) -> None:
        self.calls = 0

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        self.calls += 1
        time.sleep(0.3)
        yield CounterMetricFamily("slow", "a collector that takes its time", value=1)


async def _scrape(app: MetricsApp, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": headers,
             "query_string": b""}
    await app(scope, None, send)
    return sent


async def _scrapes_and_the_longest_stall(app: MetricsApp) -> tuple[list[Any], float]:
    longest, running = 0.0, True

    async def tick() -> None:
        nonlocal longest
        while running:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            longest = max(longest, time.perf_counter() - before)

    ticker = asyncio.create_task(tick())
    answers = await asyncio.gather(*(_scrape(app, [(b"accept", b"text/\xff")])
                                     for _ in range(10)))
    running = False
    await ticker
    return answers, longest


def test_scrapes_share_one_rendering_off_the_loop() -> None:
    registry, slow = CollectorRegistry(), _Slow()
    registry.register(slow)
    answers, longest = asyncio.run(_scrapes_and_the_longest_stall(MetricsApp(registry)))
    assert slow.calls == 1
    assert longest < 0.2, f"the event loop stood still for {longest:.2f} s"
    for start, body in answers:
        assert start["status"] == 200
        assert b"slow_total 1.0" in body["body"]


def test_an_accept_version_that_is_no_number_gets_the_text_format() -> None:
    # Before: prometheus_client's choose_encoder raised TypeError on `version=abc` and the
    # scrape was answered 500.
    registry = CollectorRegistry()
    registry.register(_Counter())
    for version in (b"abc", b"1.x.0", b"1e5"):
        accept = b"application/openmetrics-text; version=" + version
        start, body = asyncio.run(_scrape(MetricsApp(registry), [(b"accept", accept)]))
        assert start["status"] == 200
        assert (b"content-type", b"text/plain; version=0.0.4; charset=utf-8") in start["headers"]
        assert b"requests_total 1.0" in body["body"]


class _Counter(Collector):
    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("requests", "a counter", value=1)

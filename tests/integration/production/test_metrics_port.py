"""The metrics port under odd scrapes: headers that are not UTF-8, compression, OpenMetrics,
name filters (as prometheus_client's own app reads them), and many scrapes at once."""

from __future__ import annotations

import concurrent.futures
import gzip
import socket

import httpx
from tests.integration.production.conftest import Served


def _raw_get(served: Served, head: bytes) -> bytes:
    host, port = served.metrics.removeprefix("http://").split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        return connection.recv(200)


def test_a_latin1_accept_header_gets_the_metrics(explicit: Served) -> None:
    for head in (b"Accept: text/\xff\r\n", b"Accept-Encoding: \xe9\r\n"):
        answer = _raw_get(explicit, head)
        assert answer.startswith(b"HTTP/1.1 200 "), answer  # was 500, with a traceback
    assert "Traceback" not in explicit.output()


def test_formats_compression_and_names(explicit: Served) -> None:
    plain = httpx.get(explicit.metrics, headers={"Accept-Encoding": "identity"})
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "surge_requests_total" in plain.text
    # httpx decodes gzip itself: look at the raw bytes
    with httpx.stream("GET", explicit.metrics, headers={"Accept-Encoding": "gzip"}) as raw:
        assert raw.headers["content-encoding"] == "gzip"
        assert b"surge_requests_total" in gzip.decompress(b"".join(raw.iter_raw()))
    open_metrics = httpx.get(explicit.metrics,
                             headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")
    named = httpx.get(explicit.metrics, params={"name[]": "surge_requests_total"})
    assert named.status_code == 200
    assert "surge_model_loads_total" not in named.text


def test_many_scrapes_at_once_are_all_answered(explicit: Served) -> None:
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: httpx.get(explicit.metrics, timeout=60), range(200)))
    assert {a.status_code for a in answers} == {200}
    assert all("surge_requests_total" in a.text for a in answers)
    answer = httpx.post(f"{explicit.http}/v2/repository/index")
    assert answer.status_code == 200

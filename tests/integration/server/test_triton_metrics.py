"""Triton's metric names on a real `surge serve`: after a known sequence of requests (answered,
failed, a batch, a cache hit and miss) every nv_* value agrees with `/v2/models/NAME/stats`,
with one front end and with `--frontends 2` (where the scrape reads the sum of both front
ends' statistics); the failures carry their reason, and only the model that enables the
response cache has nv_cache_* series; `--metrics-names` chooses the names and refuses others."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.cli_runner import run_cli
from tests.integration.server.conftest import ServerProcess, start_server
from tests.integration.server.models import tiny_onnx

pytestmark = pytest.mark.timeout(300)

BASE = "max_batch_size: 8\ninstances: 1\nthreads: 1\nbatching: {max_queue_delay_ms: 0}\n"
SINGLES = 16  # on fresh connections: all on one of two front ends by chance: 2 ** -15
FAILURES = 2
SAMPLE = re.compile(r'^(nv_\w+)\{model="([^"]*)",(?:reason="([^"]*)",)?version="([^"]*)"\} (\S+)$',
                    re.MULTILINE)
CACHE = ("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model",
         "nv_cache_hit_duration_per_model", "nv_cache_miss_duration_per_model")
# nv_* counter -> (statistic, field) of /v2/models/NAME/stats, `ns` divided by 1000.
AGREE = {
    "nv_inference_request_success": ("success", "count"),
    "nv_inference_request_failure": ("fail", "count"),
    "nv_inference_request_duration_us": ("success", "ns"),
    "nv_inference_queue_duration_us": ("queue", "ns"),
    "nv_inference_compute_input_duration_us": ("compute_input", "ns"),
    "nv_inference_compute_infer_duration_us": ("compute_infer", "ns"),
    "nv_inference_compute_output_duration_us": ("compute_output", "ns"),
    "nv_cache_num_hits_per_model": ("cache_hit", "count"),
    "nv_cache_num_misses_per_model": ("cache_miss", "count"),
    "nv_cache_hit_duration_per_model": ("cache_hit", "ns"),
    "nv_cache_miss_duration_per_model": ("cache_miss", "ns"),
}


def _repository(root: Path) -> Path:
    for name, config in (("tiny", BASE), ("cached", BASE + "response_cache: {enable: true}\n")):
        tiny_onnx(root / name / "1" / "model.onnx")
        (root / name / "config.yaml").write_text(config)
    return root


def _serve(factory: pytest.TempPathFactory, *args: str) -> Iterator[ServerProcess]:
    repo = _repository(factory.mktemp("nv-repo"))
    proc = start_server(repo, factory.mktemp("log") / "server.log",
                        "--response-cache-bytes", "1MB", *args)
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory, "--frontends", "2")


def _body(rows: int, value: float = 1.0, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [value] * 4 * rows},
        {"name": "n", "datatype": "INT64", "shape": [rows, 3], "data": [1, 2, 3] * rows}]}
    if parameters:
        body["parameters"] = parameters
    return body


def _post(served: ServerProcess, model: str, body: dict[str, Any]) -> int:
    """On a connection of its own: with several front ends, any of them answers."""
    return httpx.post(f"{served.http}/v2/models/{model}/infer", json=body, timeout=30
                      ).status_code


def _known_sequence(served: ServerProcess) -> None:
    """SINGLES answered requests, a batch of 3 rows, FAILURES failed (a 1 us deadline no
    queue meets), one cache miss then its hit."""
    assert [_post(served, "tiny", _body(1, float(i))) for i in range(SINGLES)] == [200] * SINGLES
    assert _post(served, "tiny", _body(3)) == 200
    failed = [_post(served, "tiny", _body(1, timeout=1)) for _ in range(FAILURES)]
    assert all(code in (503, 504) for code in failed), failed
    with httpx.Client(timeout=30) as client:  # one connection: one front end's cache
        for _ in range(2):
            response = client.post(f"{served.http}/v2/models/cached/infer", json=_body(1))
            assert response.status_code == 200


def _scrape(served: ServerProcess) -> dict[tuple[str, ...], float]:
    """(name, model) -> value of the nv_* samples of version 1, named as written (a parser
    that adds `_total` to a counter's samples would hide a wrong name); a failure's reasons
    summed there, and each also under (name, model, reason)."""
    text = httpx.get(served.metrics, timeout=30).text
    found: dict[tuple[str, ...], float] = {}
    for match in SAMPLE.finditer(text):
        name, model, reason, version, value = match.groups()
        if version == "1":
            found[(name, model)] = found.get((name, model), 0.0) + float(value)
            if reason is not None:
                found[(name, model, reason)] = float(value)
    return found


def _stats(served: ServerProcess, model: str) -> dict[str, Any]:
    response = httpx.get(f"{served.http}/v2/models/{model}/stats", timeout=30)
    assert response.status_code == 200, response.text
    (entry,) = response.json()["model_stats"]
    return dict(entry)


def _expected(stats: list[dict[str, Any]], name: str) -> int:
    """A counter's value from the statistics of each front end: their sum."""
    if name == "nv_inference_count":
        return sum(int(s["inference_count"]) for s in stats)
    if name == "nv_inference_exec_count":
        return sum(int(s["execution_count"]) for s in stats)
    statistic, field = AGREE[name]
    values = [int(s["inference_stats"][statistic][field]) for s in stats]
    return sum(v // 1000 for v in values) if field == "ns" else sum(values)


def _assert_agree(scraped: dict[tuple[str, ...], float],
                  stats: dict[str, list[dict[str, Any]]]) -> None:
    """Every counter agrees; the nv_cache_* ones are only the cached model's, as Triton's."""
    for model, shares in stats.items():
        for name in (*AGREE, "nv_inference_count", "nv_inference_exec_count"):
            if name in CACHE and model != "cached":
                assert (name, model) not in scraped, (name, model)
                continue
            assert scraped[(name, model)] == _expected(shares, name), (name, model)


def test_one_front_end_agrees_with_the_statistics(one: ServerProcess) -> None:
    _known_sequence(one)
    scraped = _scrape(one)
    stats = {model: [_stats(one, model)] for model in ("tiny", "cached")}
    _assert_agree(scraped, stats)
    assert scraped[("nv_inference_request_success", "tiny")] == SINGLES + 1
    assert scraped[("nv_inference_request_failure", "tiny")] == FAILURES
    # A deadline no queue meets: refused at admission or expired in the queue, both REJECTED.
    assert scraped[("nv_inference_request_failure", "tiny", "REJECTED")] == FAILURES
    assert scraped[("nv_inference_request_failure", "tiny", "BACKEND")] == 0
    assert scraped[("nv_inference_count", "tiny")] == SINGLES + 3
    assert scraped[("nv_cache_num_hits_per_model", "cached")] == 1
    assert scraped[("nv_cache_num_misses_per_model", "cached")] == 1
    assert scraped[("nv_inference_pending_request_count", "tiny")] == 0
    text = httpx.get(one.metrics, timeout=30).text
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert 'nv_inference_request_success{model="tiny",version="1"} 17\n' in text
    assert "surge_requests_total" in text


def _front_end_shares(served: ServerProcess, model: str) -> list[dict[str, Any]]:
    """Each front end's own statistics: asked on fresh connections until two differ."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(64):
        entry = _stats(served, model)
        seen[repr(sorted(entry["inference_stats"].items()))] = entry
        if len(seen) == 2:
            break
    assert len(seen) == 2, "every connection reached the same front end"
    return list(seen.values())


def test_two_front_ends_report_the_sum_of_their_statistics(two: ServerProcess) -> None:
    _known_sequence(two)
    deadline = time.monotonic() + 60
    # Each front end writes its counts out once a second: wait for the other one's.
    while _scrape(two).get(("nv_inference_request_success", "tiny")) != SINGLES + 1:
        assert time.monotonic() < deadline, _scrape(two)
        time.sleep(0.2)
    while _scrape(two).get(("nv_cache_num_hits_per_model", "cached")) != 1:
        assert time.monotonic() < deadline, _scrape(two)
        time.sleep(0.2)
    tiny = _front_end_shares(two, "tiny")
    assert all(int(s["inference_stats"]["success"]["count"]) < SINGLES + 1 for s in tiny)
    stats = {"tiny": tiny, "cached": _front_end_shares(two, "cached")}  # one saw none
    _assert_agree(_scrape(two), stats)
    assert _scrape(two)[("nv_inference_request_failure", "tiny", "REJECTED")] == FAILURES


@pytest.fixture(scope="module")
def surge_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory, "--metrics-names", "surge")


def test_metrics_names_surge_leaves_the_triton_names_out(surge_only: ServerProcess) -> None:
    assert _post(surge_only, "tiny", _body(1)) == 200
    text = httpx.get(surge_only.metrics, timeout=30).text
    assert "surge_requests_total" in text
    assert "nv_" not in text


def test_metrics_names_refuses_an_unknown_name(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    repo = _repository(tmp_path / "repo")
    code, _, err = run_cli(["serve", str(repo), "--metrics-names", "surge,prom"], capsys)
    assert code == 2
    assert "--metrics-names 'surge,prom'" in err

"""Tuning for requests of many rows (a ranking request carries one user's candidates): max batch
counts rows, so a batch holds whole requests, configurations that cannot hold one request are
not tried, the untuned baseline runs one request per batch, and the load sends the rows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import surge.api
import surge.bench
from surge.errors import ConfigError, SurgeError
from surge.evaluate.metrics import latency_percentiles
from surge.evaluate.profile import ProfilePoint, ProfileReport
from surge.tuning import ORIGINAL, Candidate, Load, SearchSpace, Slo, predict
from surge.tuning import serving as serving_module
from surge.tuning.tune import TuneOptions, baseline_candidate, profile_sizes
from tests.cli_runner import run_cli


def rows_profile(fixed_ms: float = 1.0, per_row_ms: float = 0.1) -> ProfileReport:
    """Engine time fixed + per_row x rows, measured up to 512 rows."""
    report = ProfileReport("m", ORIGINAL, 2)
    for rows in (1, 10, 50, 100, 200, 512):
        ms = fixed_ms + per_row_ms * rows
        report.points.append(ProfilePoint(rows, 1, 1, latency_percentiles([ms / 1000.0]),
                                          rows * 1000.0 / ms))
    return report


def test_a_batch_holds_whole_requests_of_the_given_rows() -> None:
    load = Load(concurrency=64, rows=100)
    # max batch 512 holds five 100-row requests: 500 rows, 1 + 50 ms a batch
    five = predict(rows_profile(), Candidate(ORIGINAL, 512, 0.0, 1, 1), load)
    assert five.throughput == pytest.approx(5 * 1000.0 / 51.0)
    assert five.p99_ms == pytest.approx(64 * 51.0 / 5 + 51.0)
    # the same candidate under one-row requests would have seen 64-request batches of 64 rows
    ones = predict(rows_profile(), Candidate(ORIGINAL, 512, 0.0, 1, 1), Load(concurrency=64))
    assert ones.throughput == pytest.approx(64 * 1000.0 / 7.4)
    # one request per batch: the untuned baseline
    single = predict(rows_profile(), Candidate(ORIGINAL, 100, 0.0, 1, 1), load)
    assert single.throughput == pytest.approx(1000.0 / 11.0)


def test_open_loop_capacity_counts_whole_requests() -> None:
    over = predict(rows_profile(), Candidate(ORIGINAL, 250, 0.0, 1, 1), Load(rate=1e6, rows=100))
    assert over.capacity == pytest.approx(2 * 1000.0 / 21.0)  # two requests, 200 rows a batch


def test_max_batch_sizes_below_a_request_are_not_tried() -> None:
    space = SearchSpace(max_batch_sizes=(1, 64, 100, 256, 512), delays_ms=(0.0,),
                        settings=((1, 2),))
    assert {c.max_batch_size for c in space.candidates([ORIGINAL], rows=100)} == {100, 256, 512}
    assert {c.max_batch_size for c in space.candidates([ORIGINAL])} == {1, 64, 100, 256, 512}


def test_the_untuned_baseline_and_the_profile_sizes_follow_the_rows() -> None:
    assert baseline_candidate(100).max_batch_size == 100
    assert baseline_candidate().max_batch_size == 1
    assert profile_sizes(512, 100) == [1, 2, 4, 8, 16, 32, 64, 100, 128, 200, 256, 300, 400,
                                       500, 512]
    assert profile_sizes(8, 1) == [1, 2, 4, 8]


def test_load_checks_and_describes_its_rows() -> None:
    assert Load(concurrency=64, rows=100).describe() == "64 concurrent clients x 100 rows"
    assert Load(rate=50.0).describe() == "50 requests/s"
    with pytest.raises(ConfigError, match="--rows-per-request must be at least 1, got 0"):
        Load(concurrency=4, rows=0)


def test_served_trials_send_the_rows_in_every_request(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    sent: dict[str, Any] = {}

    @contextlib.contextmanager
    def fake_serving(repo: Path, model: str, timeout_s: float = 120.0) -> Iterator[Any]:
        yield SimpleNamespace(url="http://127.0.0.1:1", startup_s=0.5)

    def fake_bench(url: str, model: str, concurrency: int, duration_s: float, protocol: str,
                   **kwargs: Any) -> Any:
        sent.update(kwargs, concurrency=concurrency)
        run = SimpleNamespace(throughput=10.0, p99_ms=5.0, p50_ms=2.0, p90_ms=4.0, errors={})
        return SimpleNamespace(runs=[run], to_dict=lambda: {"runs": [{}]})

    monkeypatch.setattr(serving_module, "serving", fake_serving)
    monkeypatch.setattr(surge.bench, "run_bench", fake_bench)
    model_dir = tmp_path / "dlrm"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.yaml").write_text("name: dlrm\nmax_batch_size: 512\n")
    result = serving_module.measure_served(model_dir, Candidate(ORIGINAL, 512, 1.0, 2, 1),
                                           Load(concurrency=64, rows=100), 1.0)
    assert (sent["batch_size"], sent["concurrency"]) == (100, 64)
    assert result.measurement.throughput == 10.0


def test_surge_tune_takes_rows_per_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Any, ...]] = []
    (tmp_path / "dlrm").mkdir()
    monkeypatch.chdir(tmp_path)  # the repository below: this folder

    def fake_tune(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise SurgeError("stopped after the API call")

    monkeypatch.setattr(surge.api, "tune", fake_tune)
    code, _, _ = run_cli(["tune", ".", "--model", "dlrm", "--data", "d", "--task", "ranking",
                          "--rows-per-request", "100", "--concurrency", "64",
                          "--max-batch", "100,500"], capsys)
    assert code == 2
    options = calls[0][2]
    assert (options.slo.load.rows, options.slo.load.concurrency) == (100, 64)
    code, _, err = run_cli(["tune", ".", "--model", "dlrm", "--data", "d", "--task",
                            "ranking", "--rows-per-request", "100"], capsys)
    assert code == 2
    assert "every size is below --rows-per-request 100" in err
    assert len(calls) == 1  # refused before the tune started
    code, _, err = run_cli(["tune", ".", "--model", "dlrm", "--data", "d",
                            "--rows-per-request", "0"], capsys)
    assert code == 2
    assert "rows-per-request" in err


def test_max_batch_sizes_that_hold_no_request_are_refused_up_front() -> None:
    slo = Slo(100.0, Load(concurrency=64, rows=100))
    with pytest.raises(ConfigError, match=r"--max-batch 1,4,8,16,32,64: every size is below "
                                          r"--rows-per-request 100.*e\.g\. 100,200,500"):
        TuneOptions(data="d", task="ranking", slo=slo)
    assert TuneOptions(data="d", task="ranking", slo=slo,
                       space=SearchSpace(max_batch_sizes=(64, 128))).slo.load.rows == 100

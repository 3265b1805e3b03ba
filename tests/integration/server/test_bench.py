"""The load generator against a real server: every protocol, closed and open loop, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.integration.server.conftest import API_KEY, ServerProcess

from surge.bench import run_bench
from surge.cli import main
from surge.errors import SurgeError


@pytest.mark.parametrize("protocol", ["http", "http-json", "grpc"])
def test_closed_loop_over_each_protocol(server: ServerProcess, protocol: str) -> None:
    url = server.grpc if protocol == "grpc" else server.http
    report = run_bench(url, "tiny", [1, 4], 0.5, protocol, api_key=API_KEY, warmup_s=0.2)
    assert [run.concurrency for run in report.runs] == [1, 4]
    for run in report.runs:
        assert run.errors == {}
        assert run.ok == run.requests > 0
        assert 0 < run.p50_ms <= run.p90_ms <= run.p99_ms <= run.max_ms
        assert run.client_cpu_s > 0


def test_open_loop_holds_the_arrival_rate(server: ServerProcess) -> None:
    report = run_bench(server.http, "tiny", 8, 1.0, "http", rate=100.0, api_key=API_KEY,
                       warmup_s=0.0)
    (run,) = report.runs
    assert run.rate == 100.0
    assert 70 <= run.requests <= 130  # uniform arrivals at 100/s for one second
    assert run.errors == {}


def test_errors_are_counted_by_kind(server: ServerProcess) -> None:
    report = run_bench(server.http, "tiny", 2, 0.3, "http", api_key=API_KEY, warmup_s=0.0)
    assert report.runs[0].errors == {}
    with pytest.raises(SurgeError, match="HTTP 401"):
        run_bench(server.http, "tiny", 2, 0.3, "http", warmup_s=0.0)  # no key: metadata refused


def test_cli_prints_a_table_and_writes_json(server: ServerProcess, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", server.http, "--model", "tiny", "--concurrency", "2", "--duration",
              "500ms", "--api-key", API_KEY, "--json", str(out)])
    assert exit_info.value.code == 0
    assert "p99 ms" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["model"] == "tiny"
    assert report["runs"][0]["ok"] > 0


def test_cli_prints_a_live_line_per_second_from_the_server_metrics(
        server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", server.http, "--model", "tiny", "--concurrency", "2", "--duration",
              "2500ms", "--api-key", API_KEY, "--metrics-url", server.metrics])
    assert exit_info.value.code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "req/s" in line]
    assert len(lines) >= 2, lines
    busy = [line for line in lines if "p99" in line and "- ms" not in line]
    assert busy, lines  # the server's own histogram, between two scrapes
    assert "goodput" in busy[0]
    assert "shed" in busy[0]


@pytest.mark.parametrize(("args", "message"), [
    (["--duration", "soon"], "--duration 'soon' is not a positive duration"),
    (["--concurrency", "0,4"], "--concurrency '0,4' must list positive integers"),
    (["--concurrency", "1_6"], "--concurrency '1_6' must be integers like 1,16,64"),  # was 16
    (["--rate", "fast"], "--rate 'fast' is not a positive rate"),
    (["--protocol", "udp"], "--protocol 'udp' is not one of"),
])
def test_cli_rejects_bad_values_in_one_line(args: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "http://127.0.0.1:9", "--model", "tiny", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.replace("\n", "")

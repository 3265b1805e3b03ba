"""`surge report --trace`: the load-trace plot and summary of benchmarks/surge_load.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surge.errors import ConfigError
from surge.report import render_report
from surge.report.trace import load_trace
from tests.unit.tuning.test_report_and_staging import _saved_report


def window(second: int, p99: float, mix: dict[str, int]) -> dict[str, object]:
    return {"second": second, "offered": 10, "p99_ms": p99, "goodput": 9, "shed": 1,
            "variants": mix, "accuracy": 91.0}


TRACE = {"slo_ms": 50.0, "phase_s": 2.0, "models": [{
    "name": "fashion", "capacity_per_s": 400.0, "top": "original", "runs": [
        {"config": "untuned", "windows": [window(0, 3.0, {"original": 9}),
                                          window(1, 900.0, {"original": 9})],
         "summary": {"surge_goodput_per_s": 120.0, "surge_windows_within_slo": 0.0}},
        {"config": "adaptive<x>", "windows": [window(0, 3.0, {"original": 9}),
                                              window(1, 40.0, {"original": 2, "int8": 7})],
         "summary": {"surge_goodput_per_s": 350.0, "surge_windows_within_slo": 1.0,
                     "mean_accuracy": 90.9}},
    ]}]}


def test_report_with_a_trace_shows_its_plot_and_summary(tmp_path: Path) -> None:
    _saved_report(tmp_path / "m")
    trace = tmp_path / "surge_load.json"
    trace.write_text(json.dumps(TRACE))
    page = render_report(tmp_path / "m", trace).read_text()
    assert (tmp_path / "m" / "tuning" / "load_trace.png").read_bytes()[:4] == b"\x89PNG"
    assert 'src="load_trace.png"' in page
    assert "Load trace (SLO p99 50.0 ms)" in page
    assert "adaptive&lt;x&gt;" in page  # escaped
    assert "<td>350.0</td>" in page
    without = render_report(tmp_path / "m").read_text()
    assert "Load trace" not in without


def test_a_file_that_is_no_trace_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"runs": []}')
    with pytest.raises(ConfigError, match="no 'models' list"):
        load_trace(bad)
    bad.write_text("not json")
    with pytest.raises(ConfigError, match="not a load-trace JSON"):
        load_trace(bad)


@pytest.mark.parametrize("models", [[1], [{}], []])
def test_a_trace_of_the_wrong_shape_is_refused_naming_it(tmp_path: Path,
                                                         models: list[object]) -> None:
    _saved_report(tmp_path / "m")
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"models": models}))
    with pytest.raises(ConfigError, match=f"{trace}: not a load-trace JSON"):
        render_report(tmp_path / "m", trace)


@pytest.mark.parametrize(("text", "why"), [
    ("garbage", "not a report of `surge tune` .Expecting value"),
    ("[]", "not a JSON object"),
    ("{}", "KeyError"),
    ('{"schema_version": 99}', "schema_version 99; this surge reads 1"),
])
def test_a_report_of_the_wrong_shape_is_refused_naming_it(tmp_path: Path, text: str,
                                                          why: str) -> None:
    report = _saved_report(tmp_path / "m")
    path = tmp_path / "m" / "tuning" / "report.json"
    assert path.is_file(), report
    path.write_text(text)
    with pytest.raises(ConfigError, match=why):
        render_report(tmp_path / "m")


def test_a_fifo_as_trace_is_refused_not_waited_on(tmp_path: Path) -> None:
    """`surge report --trace FIFO` blocked forever reading it."""
    from tests.unit.fifo import bounded, make_fifo

    fifo = make_fifo(tmp_path / "trace.json")
    with pytest.raises(ConfigError, match=f"{fifo}: not a load-trace JSON .not a regular file"):
        bounded(fifo, lambda: load_trace(fifo))

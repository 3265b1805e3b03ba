"""`surge tune` and `surge report` on values that make no sense and on folders and files they
cannot use: one line naming the value (exit 2) before any work, never a traceback after it, a
search that cannot end or a page of figures that are not the model's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from surge.errors import ConfigError
from surge.report import render_report
from surge.tuning.space import Effort, Load, Slo
from surge.tuning.tune import TuneOptions, tune
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo
from tests.unit.tuning.test_report_and_staging import _saved_report

HUGE = "1" + "0" * 400  # a float of inf


@pytest.mark.parametrize(("args", "message"), [
    # each served run took a billion hours: the baseline never ended
    (["--budget", "30s", "--full-run", "1000000000h"],
     "--budget 30 s cannot hold the runs the tune makes whatever its budget: 5 full runs of "
     "3.6e+12 s"),
    # 200,001 full runs after the search, whatever the budget
    (["--budget", "10m", "--final-rounds", "100000"], "200001 full runs of 8 s"),
    (["--budget", "10s", "--short-run", "20s"], "and a short run of 20 s"),
    (["--budget", "1m", "--profile-time", "2m"], "--profile-time 120 s: longer than the whole "
                                                 "--budget 60 s"),
    # 400 digits: infinite seconds; "got inf" named no value given, an infinite budget ran
    (["--slo-p99", f"{HUGE}ms"], f"--slo-p99 '{HUGE}ms': expected a positive duration"),
    (["--budget", f"{HUGE}s"], f"--budget '{HUGE}s': expected a positive duration"),
    (["--full-run", f"{HUGE}s"], f"--full-run '{HUGE}s': expected a positive duration"),
    # one request a run: its "p99" and a throughput of 1 / its latency (hundreds a second)
    (["--rate", "0.01/s"], "--rate 0.01/s sends about 0.03 requests in a 3 s run "
                           "(--short-run): fewer than 10 measure no p99"),
    (["--rate", "1/s", "--short-runs", "0", "--full-run", "5s"],
     "--rate 1/s sends about 5 requests in a 5 s run (--full-run)"),
    (["--max-accuracy-drop", "150"], "--max-accuracy-drop 150: accuracy runs from 0 to 100 "
                                     "(percent), so a drop is at most 100 points"),
])
def test_refused_before_the_search_starts(started: list[Any], args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["tune", ".", "--model", "m", "--data", "d", *args], capsys)
    assert code == 2
    assert message in err.replace("\n", " ")
    assert "Traceback" not in err
    assert started == []


@pytest.mark.parametrize("args", [
    ["--rate", "5/s"],  # 15 requests in the default 3 s short run
    ["--max-accuracy-drop", "100"],
    ["--budget", "43s"],  # exactly 5 full runs of 8 s and a short run of 3 s
])
def test_what_is_within_reach_is_taken(started: list[Any], args: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["tune", ".", "--model", "m", "--data", "d", *args], capsys)
    assert "stopped after the API call" in err
    assert len(started) == 1


def test_the_effort_refuses_times_that_are_no_time() -> None:
    with pytest.raises(ConfigError, match="--full-run nan: expected a positive, finite"):
        Effort(full_run_s=float("nan"))
    with pytest.raises(ConfigError, match="--budget inf: expected a positive, finite"):
        Effort(budget_s=float("inf"))


@pytest.mark.parametrize("blocker", ["tuning", "tuning/report.json", "tuning/report.html",
                                     "tuning/pareto.png"])
def test_a_report_folder_it_cannot_write_is_refused_before_the_search(
        started: list[Any], capsys: pytest.CaptureFixture[str], blocker: str,
        tmp_path: Path) -> None:
    """The report was written after the whole tune: a FileExistsError or IsADirectoryError
    traceback at the end, the search's results lost."""
    make_repo(tmp_path, "tiny")
    where = tmp_path / "tiny" / blocker
    if blocker == "tuning":
        where.write_text("not a folder")
    else:
        where.mkdir(parents=True)
    code, _, err = run_cli(["tune", ".", "--model", "tiny", "--data", "d"], capsys)
    assert code == 2
    assert str(where) in err.replace("\n", "")
    assert started == []


def test_the_api_refuses_a_report_folder_it_cannot_write_before_any_work(
        tmp_path: Path) -> None:
    make_repo(tmp_path, "tiny")
    (tmp_path / "tiny" / "tuning").write_text("not a folder")
    options = TuneOptions("no-such-data", "classification", Slo(50.0, Load(concurrency=1)))
    with pytest.raises(ConfigError, match="tuning is a file, not a folder"):
        tune(tmp_path, "tiny", options)  # before the data is read


def test_an_unwritable_tuning_folder_is_refused(started: list[Any], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    make_repo(tmp_path, "tiny")
    (tmp_path / "tiny" / "tuning").mkdir()
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("tuning")
                        and writable(path, mode))
    code, _, err = run_cli(["tune", ".", "--model", "tiny", "--data", "d", "--no-write"],
                           capsys)
    assert code == 2
    assert "is not writable" in err
    assert started == []


# -- surge report ------------------------------------------------------------------------------
def _edit(model_dir: Path, text: str) -> None:
    (model_dir / "tuning" / "report.json").write_text(text)


def _report(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir / "tuning" / "report.json").read_text()))


@pytest.mark.parametrize(("blocker", "message"), [
    ("report.html", "report.html is a folder, not a file"),
    ("pareto.png", "pareto.png is a folder, not a file"),
])
def test_report_outputs_that_are_folders_are_refused(tmp_path: Path, blocker: str,
                                                     message: str) -> None:
    """IsADirectoryError tracebacks."""
    _saved_report(tmp_path / "m")
    (tmp_path / "m" / "tuning" / blocker).mkdir()
    with pytest.raises(ConfigError, match=message):
        render_report(tmp_path / "m")


def test_a_report_nested_past_the_parser_s_depth_is_refused(tmp_path: Path) -> None:
    """A RecursionError traceback."""
    _saved_report(tmp_path / "m")
    _edit(tmp_path / "m", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="not a report of `surge tune`"):
        render_report(tmp_path / "m")


def test_the_report_of_another_model_is_refused(tmp_path: Path) -> None:
    """It was rendered under this model's folder, titled and filled with the other's figures."""
    _saved_report(tmp_path / "m")
    report = _report(tmp_path / "m")
    report["model"] = "other"
    _edit(tmp_path / "m", json.dumps(report))
    with pytest.raises(ConfigError, match="the tuning report of model 'other', not of 'm'"):
        render_report(tmp_path / "m")


@pytest.mark.parametrize("slo", ["NaN", "-5", "0", "null", '"50"'])
def test_a_report_whose_slo_is_no_positive_number_is_refused(tmp_path: Path, slo: str) -> None:
    """NaN, -5 and 0 were drawn and printed as the SLO ("p99 <= nan ms")."""
    _saved_report(tmp_path / "m")
    text = json.dumps(_report(tmp_path / "m")).replace('"slo_p99_ms": 50.0', f'"slo_p99_ms": {slo}')
    _edit(tmp_path / "m", text)
    with pytest.raises(ConfigError, match="slo_p99_ms .* is not a positive number of ms"):
        render_report(tmp_path / "m")


def test_nan_and_infinity_in_a_report_read_as_no_value(tmp_path: Path) -> None:
    """As `surge tune` writes them (null): shown as '-', left out of the plots."""
    _saved_report(tmp_path / "m")
    report = _report(tmp_path / "m")
    report["served"][1]["measured"]["p99_ms"] = "@INF@"
    report["speedup"] = "@NAN@"
    _edit(tmp_path / "m", json.dumps(report).replace('"@INF@"', "Infinity")
          .replace('"@NAN@"', "NaN"))
    page = render_report(tmp_path / "m").read_text()
    assert "<tr><td>speed-up vs untuned (same run, median req/s)</td><td>-</td></tr>" in page
    assert "nan" not in page.lower().replace("nanos", "")

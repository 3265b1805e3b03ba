"""`surge tune` refuses, before any work, what would otherwise run the whole search on a value
it did not mean or fail only once the search is done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from surge.errors import ConfigError, SurgeError
from surge.tuning import AccuracyBudget
from surge.tuning.space import Load, SearchSpace, Slo
from tests.cli_runner import run_cli


@pytest.mark.parametrize(("args", "message"), [
    (["--concurrency", "0"], "--concurrency must be positive"),  # was taken as the default 64
    (["--delays", "nan"], "--delays 'nan': expected non-negative numbers"),
    (["--delays", "1,inf"], "--delays '1,inf': expected non-negative numbers"),
    (["--max-accuracy-drop", "nan"], "--max-accuracy-drop nan: expected points >= 0"),
    (["--max-accuracy-drop", "-1"], "--max-accuracy-drop -1.0: expected points >= 0"),
    (["--max-batch", "100000"], "--max-batch '100000': expected integers from 1 to 4096"),
    # int() and float() read these as 10, 3 and 10: a typo tuned at another value
    (["--max-batch", "1_0"], "--max-batch '1_0': expected integers from 1 to 4096"),
    (["--max-batch", "1,٣"], "--max-batch '1,٣': expected integers from 1 to 4096"),
    (["--delays", "0,1_0"], "--delays '0,1_0': expected non-negative numbers"),
    (["--protocol", "nosuch"], "--protocol 'nosuch': use http, http-json, grpc"),
    (["--settings", "100x100"], "at most 64 instances of 256 threads"),
    (["--variants", "nosuch"], "nosuch"),  # ignored when the model already had variants
    # a pydantic traceback once the search wrote its first config
    (["--delays", "1e9"], "--delays '1e9': expected non-negative numbers up to 10000"),
    # 100 million clients took gigabytes before the baseline sent a request
    (["--concurrency", "100000000"], "load 100000000 concurrent clients is more than one load "
                                     "generator sends (at most 10,000 clients"),
    (["--rate", "1e12/s"], "at most 10,000 clients or 1,000,000/s"),  # refused after the work
    (["--rate", "nan/s"], "--rate 'nan/s': expected requests per second"),
    # a floor no variant can reach: every one rejected after the whole evaluation
    (["--min-metric", "150"], "--min-metric 150: accuracy runs from 0 to 100 (percent)"),
    (["--min-metric", "-1"], "--min-metric -1: accuracy runs from 0 to 100 (percent)"),
    (["--min-metric", "nan"], "--min-metric nan: expected a number"),
    (["--task", "detection", "--metric", "mAP50", "--min-metric", "100.5"],
     "--min-metric 100.5: mAP50 runs from 0 to 100 (percent)"),
    (["--task", "embedding", "--min-metric", "-101"],
     "--min-metric -101: cosine runs from -100 to 100 (percent)"),
    (["--task", "regression", "--metric", "mae", "--min-metric", "5"],
     "--min-metric 5: mae is at most 0"),
])
def test_refused_before_the_search_starts(started: list[Any], args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["tune", ".", "--model", "m", "--data", "d", *args], capsys)
    assert code == 2
    assert message in err.replace("\n", " ")
    assert started == []


@pytest.mark.parametrize("args", [
    ["--min-metric", "100"], ["--min-metric", "0"], ["--min-metric", "93.5"],
    ["--task", "embedding", "--min-metric", "-50"],
    ["--task", "regression", "--metric", "mape", "--min-metric", "-12.5"],
])
def test_a_min_metric_within_the_headline_s_range_is_taken(
        started: list[Any], args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["tune", ".", "--model", "m", "--data", "d", *args], capsys)
    assert "stopped after the API call" in err
    assert len(started) == 1


def test_a_config_it_cannot_write_is_refused_before_the_search(
        started: list[Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (Path("m") / "config.yaml").write_text("max_batch_size: 8\n")
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("config.yaml")
                        and writable(path, mode))
    code, _, err = run_cli(["tune", ".", "--model", "m", "--data", "d"], capsys)
    assert code == 2
    assert "cannot write the choice into" in err
    assert started == []
    code, _, err = run_cli(["tune", ".", "--model", "m", "--data", "d", "--no-write"], capsys)
    assert "stopped after the API call" in err  # nothing to write: the search goes ahead
    assert len(started) == 1


def test_the_accuracy_budget_refuses_what_is_no_budget() -> None:
    assert AccuracyBudget(0.0).max_drop == 0.0
    with pytest.raises(SurgeError, match="--min-metric nan"):
        AccuracyBudget(1.0, float("nan"))


@pytest.mark.parametrize(("space", "message"), [
    ({"max_batch_sizes": ()}, "max_batch_sizes \\[\\]: give integers from 1 to 4096"),
    ({"max_batch_sizes": (0, 8)}, "max_batch_sizes \\[0, 8\\]"),
    ({"max_batch_sizes": (8.5,)}, "max_batch_sizes \\[8.5\\]"),
    ({"max_batch_sizes": (True,)}, "max_batch_sizes \\[True\\]"),
    ({"delays_ms": (float("nan"),)}, "delays_ms \\[nan\\]: give numbers from 0 to 10000"),
    ({"delays_ms": (-1.0,)}, "delays_ms \\[-1.0\\]"),
    ({"settings": ()}, "settings \\(\\): give \\(instances, threads\\) pairs"),
    ({"settings": ((0, 2),)}, "settings \\(\\(0, 2\\),\\)"),
    ({"settings": ((1, 2, 3),)}, "settings"),
])
def test_a_search_space_of_nothing_or_of_impossible_values_is_refused(
        space: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace(**space)


@pytest.mark.parametrize("p99_ms", [float("nan"), float("inf"), 0.0, -5.0])
def test_an_slo_that_is_no_positive_number_is_refused(p99_ms: float) -> None:
    with pytest.raises(ConfigError, match="--slo-p99 must be a positive number of ms"):
        Slo(p99_ms, Load(concurrency=8))

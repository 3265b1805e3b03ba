"""The tune's last step: the untuned and the chosen configurations re-measured back to back,
and the chosen one written only if it did not lose there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from surge.repository import Repository
from surge.tuning import ORIGINAL, Candidate, Load, Measurement, Slo
from surge.tuning.tune import (
    ServedRun,
    TuneOptions,
    TuningReport,
    baseline_candidate,
    finish,
    keeps_untuned,
)

SLO = Slo(50.0, Load(concurrency=16))
CHOSEN = Candidate("int8", 16, 0.0, 2, 1)


def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "config.yaml").write_text("name: m\nmax_batch_size: 64\n")
    return directory


def fake_serve(speeds: dict[str, float], p99_ms: float = 10.0
               ) -> Callable[[Candidate, str], ServedRun]:
    def serve(candidate: Candidate, rung: str) -> ServedRun:
        m = Measurement(speeds[candidate.variant], p99_ms, rung)
        return ServedRun(candidate, rung, m, m, 1.0)
    return serve


def run_finish(tmp_path: Path, speeds: dict[str, float], p99_ms: float = 10.0
               ) -> tuple[TuningReport, Repository]:
    directory = model_dir(tmp_path)
    report = TuningReport("m", "classification", "d", SLO.p99_ms, "16", 16, None, 1.0, None)
    options = TuneOptions("d", "classification", SLO)
    finish(report, fake_serve(speeds, p99_ms), CHOSEN, directory, options)
    return report, Repository(tmp_path)


def test_a_faster_choice_is_written(tmp_path: Path) -> None:
    report, repo = run_finish(tmp_path, {ORIGINAL: 100.0, "int8": 300.0})
    assert report.speedup == pytest.approx(3.0)
    assert not report.kept_untuned
    config = repo.config("m")
    assert (config.variant, config.max_batch_size, config.instances) == ("int8", 16, 2)


def test_a_choice_that_loses_back_to_back_is_not_written(tmp_path: Path) -> None:
    report, repo = run_finish(tmp_path, {ORIGINAL: 300.0, "int8": 280.0})
    assert report.kept_untuned
    assert report.chosen == CHOSEN  # the search's pick stays on record
    untuned = baseline_candidate()
    config = repo.config("m")
    assert (config.variant, config.max_batch_size, config.instances, config.threads) == (
        None, untuned.max_batch_size, untuned.instances, untuned.threads)
    assert config.slo_p99_ms == SLO.p99_ms


def test_a_slower_choice_that_meets_the_slo_beats_an_untuned_one_that_misses_it() -> None:
    untuned = ServedRun(baseline_candidate(), "final", Measurement(300.0, 80.0),
                        Measurement(300.0, 80.0), 1.0)
    assert not keeps_untuned(untuned, 0.9, slo_p99_ms=50.0)
    assert keeps_untuned(untuned, 0.9, slo_p99_ms=100.0)
    assert not keeps_untuned(untuned, None, slo_p99_ms=100.0)

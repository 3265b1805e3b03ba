"""`surge tune` on a handful of evaluation samples: refused before any work, not scored and ranked
as if an accuracy over 3 rows were a measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.errors import ConfigError
from surge.repository import Repository
from surge.tuning.space import Load, Slo
from surge.tuning.tune import TuneOptions, _reference_dataset, tune
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo


def _rows(path: Path, count: int) -> Path:
    x = np.random.default_rng(0).random((count, 4), dtype=np.float32)
    np.savez(path, x=x, labels=x.argmax(axis=1))
    return path


def test_a_tune_on_three_samples_is_refused_before_any_work(tmp_path: Path) -> None:
    """The variants were made, scored and ranked on 3 rows: an accuracy that moves by 33
    points a row, printed as if it were a measurement."""
    make_repo(tmp_path, "tiny")
    data = _rows(tmp_path / "few.npz", 3)
    options = TuneOptions(str(data), "classification", Slo(50.0, Load(concurrency=1)))
    with pytest.raises(ConfigError, match=r"--data '.*few.npz' has 3 sample\(s\): fewer than "
                                          r"100 samples measure no accuracy worth a budget "
                                          r"\(one sample is 33.3 points\)"):
        tune(tmp_path, "tiny", options)
    assert Repository(tmp_path).variants("tiny") == []  # refused before the optimizer ran


def test_a_hundred_samples_are_enough(tmp_path: Path) -> None:
    make_repo(tmp_path, "tiny")
    options = TuneOptions(str(_rows(tmp_path / "rows.npz", 100)), "classification",
                          Slo(50.0, Load(concurrency=1)))
    assert len(_reference_dataset(Repository(tmp_path), "tiny", options)) == 100


def test_eval_samples_below_the_minimum_are_refused(started: list[Any],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["tune", ".", "--model", "m", "--data", "d", "--eval-samples", "10"],
                           capsys)
    assert code == 2
    assert "--eval-samples 10: fewer than 100 samples measure no accuracy" in err
    assert started == []

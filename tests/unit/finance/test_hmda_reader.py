"""A broken HMDA.rda (empty, a column missing, a missing value) is one line naming the file:
before, an empty file was a NotImplementedError traceback from rdata's parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from surge.errors import ConfigError
from surge_examples.finance import data
from surge_examples.finance.data import load_hmda


def test_an_empty_rda_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "HMDA.rda").write_bytes(b"")
    with pytest.raises(ConfigError, match="HMDA.rda: cannot be read as R data"):
        load_hmda(tmp_path)


def _frame(**changes: Any) -> pd.DataFrame:
    columns = {name: np.ones(3) for name in (*data.NUMERIC, *data.ORDINAL)}
    columns.update({name: ["no", "yes", "no"] for name in ("deny", *data.YES_NO)})
    columns.update(changes)
    return pd.DataFrame({k: v for k, v in columns.items() if v is not None})


@pytest.mark.parametrize(("frame", "match"), [
    (_frame(chist=None), r"lacks column\(s\) \['chist'\]"),
    (_frame(lvrat=[0.5, np.nan, 0.7]), r"missing values in \['lvrat'\]"),
])
def test_a_frame_that_does_not_fit_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame, match: str) -> None:
    import rdata

    (tmp_path / "HMDA.rda").write_bytes(b"stand-in")
    monkeypatch.setattr(rdata, "read_rda", lambda path: {"HMDA": frame})
    with pytest.raises(ConfigError, match=match):
        load_hmda(tmp_path)


def test_a_file_without_the_frame_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rdata

    (tmp_path / "HMDA.rda").write_bytes(b"stand-in")
    monkeypatch.setattr(rdata, "read_rda", lambda path: {"Other": _frame()})
    with pytest.raises(ConfigError, match="holds no data frame 'HMDA'"):
        load_hmda(tmp_path)


def test_a_fitting_frame_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rdata

    (tmp_path / "HMDA.rda").write_bytes(b"stand-in")
    monkeypatch.setattr(rdata, "read_rda", lambda path: {"HMDA": _frame()})
    columns, labels = load_hmda(tmp_path)
    assert labels.tolist() == [0, 1, 0]
    assert columns["selfemp"].tolist() == [0.0, 1.0, 0.0]

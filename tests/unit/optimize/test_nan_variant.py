"""A variant that answers NaN where the original answers numbers is refused: a NaN error
compares false with every bound, so before it passed max_abs and mean_abs."""

from __future__ import annotations

import numpy as np
import pytest

from surge.optimize.check import compare
from surge.optimize.variant import Tolerance

REFERENCE = {"probability": np.array([[0.1], [0.9], [0.2], [0.8]], np.float32)}
NAN = {"probability": np.array([[np.nan], [0.9], [0.2], [0.8]], np.float32)}


def test_nan_variant_fails_raw_tolerances() -> None:
    result = compare(REFERENCE, NAN, None, Tolerance(max_abs=0.01, mean_abs=0.01))
    assert not result.passed
    assert "1 of 4 values NaN or infinite" in result.failures[0]


def test_nan_variant_fails_the_ranking_check_without_aborting() -> None:
    labels = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    result = compare(REFERENCE, NAN, "ranking", Tolerance(max_ndcg_drop=2, max_auc_drop=1),
                     labels)
    assert not result.passed
    assert result.ndcg is None
    clean = compare(REFERENCE, dict(REFERENCE), "ranking",
                    Tolerance(max_ndcg_drop=2, max_auc_drop=1), labels)
    assert clean.passed
    assert clean.ndcg == 1.0


def test_check_rows_of_one_class_name_the_rows() -> None:
    from surge.evaluate.metrics import MetricError
    from surge.tasks import get_task

    with pytest.raises(MetricError, match="cannot score the original on its 1 labelled check"):
        get_task("ranking").check(np.array([0.5]), np.array([0.5]), np.array([[0, 1]]))

"""Tuning with a task scored against the original (embeddings): the original is its own
reference, so it scores perfectly and its variants are scored against its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surge.evaluate.harness import EvalDataset
from surge.repository import Repository
from surge.tuning import Load, Slo
from surge.tuning.space import ORIGINAL
from surge.tuning.tune import TuneOptions, TuningReport, _evaluate_all
from tests.unit.tiny_models import make_repo


def test_the_original_is_scored_against_itself(tmp_path: Path) -> None:
    repo = Repository(make_repo(tmp_path / "repo"))
    x = np.random.default_rng(0).random((40, 4), dtype=np.float32)
    dataset = EvalDataset("rows", {"x": x})
    options = TuneOptions(data="rows", task="embedding", slo=Slo(100.0, Load(concurrency=4)))
    report = TuningReport("tiny", "embedding", "rows", 100.0, "4 clients", 4, None, 1.0, None)
    results = _evaluate_all(repo, "tiny", [ORIGINAL], dataset, options, None, report)
    assert report.variants[0].metric == pytest.approx(100.0)
    assert report.variants[0].accepted
    np.testing.assert_allclose(results[ORIGINAL].outputs["y"], 2 * x + 1, rtol=1e-6)

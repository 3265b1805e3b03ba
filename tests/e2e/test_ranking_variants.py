"""`surge optimize` on the trained DLRM of examples/recommendation/repository: the ranking task
checks variants by NDCG@10 and AUC on the simulator's labelled candidate lists, so static int8
(one scale per table, which ranks as badly as random scores) is refused while int8 and fp16
embedding tables (a scale per row, or half precision) are kept at a fraction of the size."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from surge.optimize import parse_variants
from surge.optimize.pipeline import optimize_model

ENTRY = Path(__file__).resolve().parents[2] / "examples" / "recommendation" / "repository" / "dlrm"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    repo = tmp_path_factory.mktemp("dlrm-variants")
    target = repo / "dlrm"
    target.mkdir()
    shutil.copytree(ENTRY / "1", target / "1")
    shutil.copy(ENTRY / "config.yaml", target / "config.yaml")
    configs = parse_variants("int8-static,int8-tables,fp16-tables")
    return {o.name: o for o in optimize_model(repo, "dlrm", configs)}


def test_static_int8_is_refused_by_the_ranking_metric(outcomes: dict) -> None:
    static = outcomes["int8-static"]
    assert not static.kept
    check = static.variant.check
    assert [f.split(" drop")[0] for f in check.failures] == ["NDCG", "AUC"]
    assert check.reference_ndcg > 0.7
    assert check.ndcg < 0.4  # about what random scores get


@pytest.mark.parametrize("name", ["int8-tables", "fp16-tables"])
def test_table_variants_keep_the_ranking_and_are_kept(outcomes: dict, name: str) -> None:
    outcome = outcomes[name]
    assert outcome.kept
    check = outcome.variant.check
    assert check.reference_ndcg - check.ndcg < 0.005
    assert check.reference_auc - check.auc < 0.005
    details = outcome.variant.details
    assert details["tables"] == [f"inner.tables.{k}.weight" for k in range(3)]
    ratio = details["stored_bytes"] / details["table_bytes"]
    assert ratio == pytest.approx(0.5 if name == "fp16-tables" else 0.3125, abs=1e-3)

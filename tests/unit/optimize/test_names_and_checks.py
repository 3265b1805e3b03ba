"""Variant names, tolerances and the comparison measures."""

from __future__ import annotations

import numpy as np
import pytest

from surge.errors import ConfigError
from surge.optimize import (
    Bf16Config,
    Fp16Config,
    Int8DynamicConfig,
    Int8StaticConfig,
    LowRankConfig,
    OnnxExportConfig,
    PruneConfig,
    Tolerance,
    parse_variant,
    parse_variants,
)
from surge.optimize.check import compare
from surge.optimize.names import parse_tolerance
from surge.tasks.embedding import mean_cosine


@pytest.mark.parametrize(("name", "config"), [
    ("int8-static", Int8StaticConfig()),
    ("int8-static-entropy", Int8StaticConfig(method="entropy")),
    ("int8-dynamic", Int8DynamicConfig()),
    ("prune-30", PruneConfig(ratio=0.3)),
    ("prune-50-l2", PruneConfig(ratio=0.5, norm="l2")),
    ("lowrank-0.9", LowRankConfig(energy=0.9)),
    ("lowrank-r16", LowRankConfig(energy=None, rank=16)),
    ("bf16", Bf16Config()),
    ("fp16", Fp16Config()),
    ("fp16-torch", Fp16Config(engine="torch")),
    ("onnx", OnnxExportConfig()),
])
def test_variant_names_map_to_configs(name: str, config: object) -> None:
    assert parse_variant(name) == config


def test_config_names_round_trip() -> None:
    for name in ("prune-30", "lowrank-0.9", "lowrank-r16", "int8-static", "bf16"):
        assert parse_variant(name).variant_name() == name


@pytest.mark.parametrize(("spec", "message"), [
    ("int4", "unknown variant 'int4'; known: onnx, int8-dynamic"),
    ("prune-150", "prune ratio 150% is out of range"),
    ("prune-0", "prune ratio 0% is out of range"),
    ("prune-abc", "'abc' is not a number"),
    ("lowrank-1.5", "low-rank energy 1.5 is out of range"),
    ("bf16,bf16", "given twice"),
    (" , ", "no variants given"),
    # float() reads these, but the names are no folder a variant can be served from
    ("prune-+50", r"invalid variant name 'prune-\+50'"),
    ("prune-" + "0" * 130 + "5", "invalid variant name 'prune-0000"),
])
def test_bad_variant_names_give_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_variants(spec)
    assert "\n" not in str(info.value)


def test_tolerance_parsing() -> None:
    assert Tolerance(**parse_tolerance("top1=0.99, cosine=0.98,accuracy_drop=0.5")) == Tolerance(
        min_top1=0.99, min_cosine=0.98, max_accuracy_drop=0.5)
    with pytest.raises(ConfigError, match="bad tolerance 'speed=2'"):
        parse_tolerance("speed=2")
    with pytest.raises(ConfigError, match="tolerance 'top1=x': 'x' is not a number >= 0"):
        parse_tolerance("top1=x")
    for bad, why in [("top1=nan", "'nan' is not a number >= 0"), ("top1=-1", "'-1' is not"),
                     ("max_abs=inf", "'inf' is not"), ("top1=5", "top1 is a share, at most 1"),
                     ("", "names no bound"), (" , ", "names no bound"),
                     # the last of two values was taken silently
                     ("top1=0.9,top1=0.8", "gives top1 twice; give it once")]:
        with pytest.raises(ConfigError, match=why):  # nan had every variant "kept"
            parse_tolerance(bad)


def test_compare_measures_classifier_agreement_and_accuracy() -> None:
    ref = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]], np.float32)
    cand = np.array([[2.0, 1.5], [1.5, 1.0], [3.0, 0.0], [0.0, 2.0]], np.float32)
    labels = np.array([0, 1, 0, 0])
    result = compare({"y": ref}, {"y": cand}, "classification",
                     Tolerance(min_top1=0.8, max_accuracy_drop=10.0), labels)
    assert result.top1_agreement == 0.75
    assert (result.reference_accuracy, result.accuracy) == (0.75, 0.5)
    assert result.max_abs == 1.5
    assert result.mean_abs == pytest.approx(2.0 / 8)
    assert result.failures == ("top-1 agreement 0.7500 < 0.8", "accuracy drop 25.00 points > 10.0")
    assert not result.passed


def test_compare_embeddings_by_cosine() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([[2.0, 0.0], [1.0, 1.0]], np.float32)
    assert mean_cosine(a, b) == pytest.approx((1.0 + 2 ** -0.5) / 2)
    result = compare({"e": a}, {"e": b}, "embedding", Tolerance(min_cosine=0.9))
    assert result.failures == ("cosine 0.8536 < 0.9",)
    assert compare({"e": a}, {"e": 3 * a}, "embedding", Tolerance(min_cosine=0.999)).passed

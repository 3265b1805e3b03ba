"""Low-rank factorization: exact at full rank, rank by energy, skipped where it saves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from surge.errors import ConfigError
from surge.optimize import LowRankConfig, Tolerance, low_rank
from surge.optimize.low_rank import choose_rank, factorize_conv, factorize_linear, factorize_module
from tests.unit.optimize.models import MLP, seeded, vector_source


def test_linear_full_rank_reconstructs_the_weight() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(12, 7)
    factor = factorize_linear(layer, 7)
    product = factor[1].weight @ factor[0].weight
    torch.testing.assert_close(product, layer.weight, atol=1e-5, rtol=1e-5)
    x = torch.randn(5, 12)
    torch.testing.assert_close(factor(x), layer(x), atol=1e-5, rtol=1e-5)


def test_conv_full_rank_reconstructs_the_output() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 6, 3, stride=2, padding=1)
    factor = factorize_conv(layer, 6)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(factor(x), layer(x), atol=1e-5, rtol=1e-5)


def test_energy_picks_the_smallest_rank_holding_it() -> None:
    singular = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energy shares 9/14, 13/14, 14/14
    assert choose_rank(singular, 0.6, None) == 1
    assert choose_rank(singular, 0.9, None) == 2
    assert choose_rank(singular, 0.95, None) == 3
    assert choose_rank(singular, None, 10) == 4


def test_low_rank_weights_are_factorized_exactly(tmp_path: Path) -> None:
    """A rank-3 64x64 layer: energy 0.99 finds rank 3, the variant matches the original."""
    model = MLP((8, 64, 64, 4))
    with torch.no_grad():
        model.net[2].weight.copy_(torch.randn(64, 3) @ torch.randn(3, 64))
    source = vector_source(tmp_path, model)
    variant = low_rank(source, LowRankConfig(energy=0.99), tmp_path / "lr", Tolerance(max_abs=1e-3))
    layers = variant.details["layers"]
    assert layers["net.2"]["rank"] == 3
    assert layers["net.2"]["full_rank"] == 64
    assert "kept" in layers["net.0"]  # 8x64 at near full rank saves nothing: left as is
    assert variant.details["layers_factorized"] == 1
    assert variant.check.passed, variant.check.failures


def test_layers_that_would_not_save_compute_are_kept() -> None:
    model = seeded(MLP((16, 16, 4)))
    factorized, report = factorize_module(model, LowRankConfig(energy=1.0))
    assert all("kept" in r for r in report.values())
    assert isinstance(factorized.net[0], nn.Linear)


def test_fixed_rank_and_skip_list() -> None:
    model = seeded(MLP((32, 32, 32)))
    factorized, report = factorize_module(model, LowRankConfig(energy=None, rank=4, skip=("net.2",)))
    assert isinstance(factorized.net[0], nn.Sequential)
    assert factorized.net[0][0].out_features == 4
    assert isinstance(factorized.net[2], nn.Linear)
    assert "net.2" not in report


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"energy": 1.5}, "energy 1.5 is out of range"),
    ({"energy": 0.0}, "energy 0.0 is out of range"),
    ({"energy": None, "rank": 0}, "rank 0 must be a positive integer"),
    ({"energy": 0.9, "rank": 4}, "exactly one of energy or rank"),
])
def test_bad_low_rank_configs_are_refused(kwargs: dict[str, float | None], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LowRankConfig(**kwargs)  # type: ignore[arg-type]

"""The applications' models refuse sizes that build empty layers, and training refuses a
model that cannot take its data before any step (before: a model that trained to a constant
score, or a torch traceback from every rank in the first batch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from surge.errors import ConfigError
from surge.tasks import Split
from surge.train.config import load_train_config
from surge.train.data import check_model_fits
from surge_examples.finance.model import price_forecaster, tabular_mlp
from surge_examples.recommendation.model import dlrm

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


@pytest.mark.parametrize(("build", "kwargs"), [
    (dlrm, {"dim": 0}), (dlrm, {"users": -3}), (tabular_mlp, {"hidden": 0}),
    (tabular_mlp, {"depth": -1}), (price_forecaster, {"hidden": 0}),
])
def test_builders_refuse_empty_sizes(build: object, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="whole number"):
        build(**kwargs)  # type: ignore[operator]


def _rows(user: float, rows: int = 4) -> torch.Tensor:
    packed = torch.zeros(rows, 5)
    packed[:, 0] = user
    return packed


def test_ids_past_the_tables_are_a_recipe_error() -> None:
    config = load_train_config(RECIPES / "dlrm.yaml", ["model.kwargs.users=10"])
    model = dlrm(users=10)
    labels = torch.tensor([0, 1, 0, 1])
    good = Split(_rows(9), labels)
    check_model_fits(model, config, good, good)
    with pytest.raises(ConfigError, match="column 'user' holds id 946.*has 10 rows"):
        check_model_fits(model, config, Split(_rows(946), labels), good)
    with pytest.raises(ConfigError, match="validation split's column 'user' holds id -1"):
        check_model_fits(model, config, good, Split(_rows(-1), labels))


def test_a_width_the_data_lacks_is_a_recipe_error() -> None:
    config = load_train_config(RECIPES / "price-forecaster.yaml", ["model.kwargs.window=6"])
    model = price_forecaster(window=6)
    split = Split(torch.rand(4, 12) + 1, torch.rand(4))
    with pytest.raises(ConfigError, match="window': 6.*one sample \\[12\\].*RuntimeError"):
        check_model_fits(model, config, split, split)
    assert model.training  # the probe left the model as it found it


def test_a_multi_process_run_refuses_such_a_model_before_torchrun_starts() -> None:
    """Checked once by `surge train` itself: in the ranks it failed in each one, inside
    torchrun's failure report."""
    from surge.train.launcher import LaunchOptions, validate

    config = load_train_config(RECIPES / "price-forecaster.yaml",
                               ["model.kwargs.window=6", "parallelism=ddp"])
    with pytest.raises(ConfigError, match="window': 6.*one sample"):
        validate(config, LaunchOptions(nproc=2))

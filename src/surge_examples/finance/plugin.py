"""Registers the finance data sets and models with the library (entry point group
`surge.plugins`)."""

from __future__ import annotations

from surge.tasks import Registry
from surge_examples.finance.data import HmdaCredit, StockPrices


def register(registry: Registry) -> None:
    registry.add_dataset(HmdaCredit.name, HmdaCredit)
    registry.add_dataset(StockPrices.name, StockPrices)
    registry.add_model("credit-mlp", "surge_examples.finance.model:tabular_mlp")
    registry.add_model("price-forecaster", "surge_examples.finance.model:price_forecaster")

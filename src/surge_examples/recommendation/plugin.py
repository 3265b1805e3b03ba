"""Registers the simulated clicks and the DLRM model with the library (entry point group
`surge.plugins`)."""

from __future__ import annotations

from surge.tasks import Registry
from surge_examples.recommendation.data import SimulatedClicks


def register(registry: Registry) -> None:
    registry.add_dataset(SimulatedClicks.name, SimulatedClicks)
    registry.add_model("dlrm", "surge_examples.recommendation.model:dlrm")

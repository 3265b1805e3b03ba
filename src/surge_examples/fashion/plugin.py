"""Registers Fashion-MNIST and its CNN with the library (entry point group `surge.plugins`)."""

from __future__ import annotations

from surge.tasks import Registry
from surge_examples.fashion.data import FashionMnist

DATASET = "fashion-mnist"
MODEL = "fashion-cnn"


def register(registry: Registry) -> None:
    registry.add_dataset(DATASET, FashionMnist)
    registry.add_model(MODEL, "surge_examples.fashion.model:fashion_cnn")

"""Registers the photo datasets of the ImageNet classifiers with the library (entry point group
`surge.plugins`)."""

from __future__ import annotations

from functools import partial

from surge.tasks import Registry
from surge_examples.images.data import CLASSIFIERS, Agreement, PhotoFiles


def register(registry: Registry) -> None:
    registry.add_dataset(PhotoFiles.name, PhotoFiles)
    for model in CLASSIFIERS:
        registry.add_dataset(f"imagenet-agreement-{model}", partial(Agreement, model))

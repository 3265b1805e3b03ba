"""Registers the text corpora, the text-classification task and the text classifiers with the
library (entry point group `surge.plugins`)."""

from __future__ import annotations

from functools import partial

from surge.tasks import Registry
from surge_examples.text.corpus import CORPORA
from surge_examples.text.data import CorpusTexts, TextCorpus
from surge_examples.text.task import TextClassification

MODELS = {"text-bag": "surge_examples.text.model:bag_classifier",
          "minilm-classifier": "surge_examples.text.model:minilm_classifier"}


def register(registry: Registry) -> None:
    registry.add_task(TextClassification)
    for corpus in CORPORA:
        registry.add_dataset(corpus, partial(TextCorpus, corpus))
        registry.add_dataset(f"{corpus}-tokens", partial(TextCorpus, corpus, encoder_inputs=True))
        registry.add_dataset(f"{corpus}-text", partial(CorpusTexts, corpus))
    for name, builder in MODELS.items():
        registry.add_model(name, builder)

"""A task written outside the library: regression of y = x . w + 1 with a tiny Linear model.

Everything Surge needs is here (a Task, a Dataset, a model builder); the recipe names them as
'package.module:name'."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from surge.tasks import DataOptions, Dataset, Decoder, EvalDataset, LossFn, Split, Task, TrainMetric

FEATURES = 4
WEIGHTS = torch.tensor([0.5, -1.0, 2.0, 0.25])


@dataclass(frozen=True)
class RegressionReport:
    count: int
    mae: float
    mse: float


class ToyRegression(Task):
    name = "toy-regression"
    metrics: ClassVar[dict[str, str]] = {"mae": "mae", "mse": "mse"}
    train_metric = TrainMetric(record="val_mae", published="val_mae", label="MAE",
                               higher_is_better=False)

    def score(self, dataset: EvalDataset, outputs: Mapping[str, np.ndarray], output: str,
              reference: np.ndarray | None, decoder: Decoder | None) -> RegressionReport:
        assert dataset.labels is not None
        error = outputs[output].reshape(-1) - dataset.labels.reshape(-1)
        return RegressionReport(len(error), float(np.abs(error).mean()), float((error ** 2).mean()))

    def headline(self, report: Any, metric: str) -> float:
        return float(getattr(report, self.metrics[metric]))  # an error, not a percentage

    def loss(self, model: nn.Module, label_smoothing: float) -> LossFn:
        return lambda outputs, targets: nn.functional.mse_loss(outputs.reshape(-1), targets)

    def validation_metric(self, model: nn.Module, split: Split, device: torch.device) -> float:
        with torch.inference_mode():
            return float((model(split.inputs).reshape(-1) - split.labels).abs().mean())


class ToyData(Dataset):
    name = "toy-regression"

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        generator = torch.Generator().manual_seed(options.seed)
        splits = []
        for size in (options.train_size or 256, options.test_size or 64):
            inputs = torch.randn(size, FEATURES, generator=generator)
            splits.append(Split(inputs, inputs @ WEIGHTS + 1.0))
        return splits[0], splits[1]

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        test = self.training(options)[1]
        return EvalDataset(self.name, {input_name: test.inputs.numpy()}, test.labels.numpy())


def toy_data() -> ToyData:
    return ToyData()


def linear(features: int = FEATURES) -> nn.Module:
    return nn.Linear(features, 1)

"""Regression and forecasting: real-valued outputs scored by MAE, RMSE and MAPE.

Headlines grow with quality, as the accuracy budget of `surge tune` assumes: they are the
negated errors (MAE and RMSE in the target's units, MAPE in percent), so a budget of 1.0 lets
MAE grow by one unit or MAPE by one point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from surge.evaluate.metrics import MetricError
from surge.tasks.base import EVAL_BATCH, Decoder, LossFn, Task, TrainMetric
from surge.tasks.data import EvalDataset, Split
from surge.tasks.tabular import publish_columns

if TYPE_CHECKING:
    import torch
    from torch import nn

    from surge.train.config import TrainConfig
    from surge.train.publish import Published


@dataclass(frozen=True)
class RegressionReport:
    count: int
    mae: float
    rmse: float
    mape: float
    """Mean |error| / |target| as a fraction, over the targets that are not zero."""


def regression_report(targets: np.ndarray, predictions: np.ndarray) -> RegressionReport:
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    if targets.size != predictions.size:
        raise MetricError(f"{predictions.size} predictions for {targets.size} targets")
    if targets.ndim and predictions.ndim and len(targets) != len(predictions):
        # [N, H] targets against [N * H] outputs would pair values of different rows.
        raise MetricError(f"{len(predictions)} rows of predictions for {len(targets)} rows of "
                          "targets")
    targets = targets.astype(np.float64).reshape(-1)
    predictions = predictions.astype(np.float64).reshape(-1)
    if not len(targets):
        raise MetricError("no targets to score")
    # A NaN or infinite value would make every error NaN or inf: a figure that means nothing.
    for values, what in ((targets, "targets"), (predictions, "predictions")):
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise MetricError(f"{bad} of {len(values)} {what} are NaN or infinite; the errors "
                              "are undefined on them")
    error = predictions - targets
    nonzero = targets != 0
    if not nonzero.any():
        raise MetricError("MAPE is undefined: every target is zero")
    return RegressionReport(len(targets), float(np.abs(error).mean()),
                            float(np.sqrt((error ** 2).mean())),
                            float(np.abs(error[nonzero] / targets[nonzero]).mean()))


class Regression(Task):
    """Outputs [N] or [N, H] scored against targets of the same size."""

    name = "regression"
    metrics: ClassVar[dict[str, str]] = {"mae": "mae", "rmse": "rmse", "mape": "mape"}
    train_metric = TrainMetric(record="val_mae", published="val_mae", label="MAE",
                               higher_is_better=False)

    def score(self, dataset: EvalDataset, outputs: Mapping[str, np.ndarray], output: str,
              reference: np.ndarray | None, decoder: Decoder | None) -> RegressionReport:
        if dataset.labels is None:
            raise MetricError(f"dataset {dataset.name!r} has no targets to score {self.name}")
        values, targets = outputs[output], np.asarray(dataset.labels)
        if values.size != targets.size:
            # e.g. a classifier's scores: "50 predictions for 5 targets" named neither
            raise MetricError(
                f"output {output!r} has shape {list(values.shape)}, {values.size} values for "
                f"{targets.size} targets of shape {list(targets.shape)}: a regression model "
                "answers one value per target (class scores need --task classification)")
        return regression_report(targets, values)

    def headline(self, report: Any, metric: str) -> float:
        value = float(getattr(report, self.metrics[metric]))
        return -100.0 * value if metric == "mape" else -value

    def headline_range(self, metric: str) -> tuple[float, float]:
        return -math.inf, 0.0  # negated errors

    def headline_text(self, headline: float, metric: str) -> str:
        # The error itself: the negated headline read "mae -14.76%" for an MAE of $14.76.
        return f"{-headline:.2f}%" if metric == "mape" else f"{-headline:.4g} (target units)"

    def loss(self, model: nn.Module, label_smoothing: float) -> LossFn:
        from torch.nn import functional

        return lambda outputs, targets: functional.mse_loss(
            outputs.reshape(-1).float(), targets.reshape(-1).float())

    def check_targets(self, split: Split, what: str) -> None:
        """Finite targets: a NaN one makes the loss NaN at its first batch, and the run stops
        advising a lower learning rate."""
        from surge.errors import ConfigError

        labels = split.labels
        if labels.is_floating_point() and not bool(labels.isfinite().all()):
            bad = int((~labels.isfinite()).sum())
            raise ConfigError(f"{what} targets hold {bad} NaN or infinite value(s) of "
                              f"{labels.numel()}")

    def validation_metric(self, model: nn.Module, split: Split, device: torch.device) -> float:
        import torch

        total = 0.0
        with torch.inference_mode():
            for start in range(0, len(split), EVAL_BATCH):
                out = model(split.inputs[start:start + EVAL_BATCH].to(device)).float().cpu()
                targets = split.labels[start:start + EVAL_BATCH].float()
                total += float((out.reshape(-1) - targets.reshape(-1)).abs().sum())
        return total / split.labels.numel()

    def publish(self, model: nn.Module, config: TrainConfig, metrics: dict[str, Any],
                example: torch.Tensor) -> Published:
        return publish_columns(model, config, metrics, example, probability=False)


class Forecasting(Regression):
    """Regression whose inputs are a window of a series' past and whose targets are its next
    value(s): the same errors, a name of its own so recipes and reports say what they are."""

    name = "forecasting"

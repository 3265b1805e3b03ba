"""The Task interface: what a kind of problem (classification, detection, embedding, ...) needs
from its data, how a model of it trains, how its outputs are scored, checked and published.

`surge train`, `surge optimize`, `surge.evaluate`, `surge tune` and `surge bench` talk to a task
only through this class, so a new task is one subclass registered by name (see
`surge.tasks.registry`) or named as `package.module:Class`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from surge.errors import ConfigError
from surge.evaluate.metrics import MetricError
from surge.tasks.data import EvalDataset, Split

if TYPE_CHECKING:
    import torch
    from torch import nn

    from surge.optimize.variant import Tolerance
    from surge.train.config import TrainConfig
    from surge.train.publish import Published

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
# flip(inputs, targets, mask) -> the batch with the samples where `mask` is set mirrored
Flip = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"],
                tuple["torch.Tensor", "torch.Tensor"]]
# decoder(outputs of a model, COCO image ids of those rows) -> COCO results-format detections
Decoder = Callable[[Mapping[str, np.ndarray], np.ndarray], list[dict[str, Any]]]
Inputs = dict[str, np.ndarray]
EVAL_BATCH = 1000


@dataclass(frozen=True)
class TrainMetric:
    """The number training validates on each epoch and keeps the best epoch by."""

    record: str
    """Key of the per-epoch record in metrics.jsonl, e.g. val_accuracy."""
    published: str
    """Key in the exported model's metrics.json, e.g. test_accuracy."""
    label: str
    """How logs and plots name it, e.g. accuracy, mAP@0.5."""
    per_sample: bool = True
    """A mean over samples: each rank scores its shard. Otherwise (mAP) rank 0 scores the whole
    validation split."""
    higher_is_better: bool = True


@dataclass(frozen=True)
class CheckMeasures:
    """What a task measures when the optimizer compares a variant's outputs with the original's."""

    top1_agreement: float | None = None
    cosine: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    ndcg: float | None = None
    """Ranking: NDCG@k of the variant's scores on labelled candidate lists (0-1)."""
    reference_ndcg: float | None = None
    auc: float | None = None
    """Ranking and binary tasks: AUC of the variant's scores over the labelled rows (0-1)."""
    reference_auc: float | None = None


class Task(ABC):
    """One kind of problem. Subclasses set the class attributes and implement `score`; the
    training hooks are needed only by tasks `surge train` trains."""

    name: ClassVar[str]
    metrics: ClassVar[dict[str, str]]
    """Headline metric name -> field of the `score` report (a fraction; headlines are percent).
    The first is the default headline; an accuracy budget applies to it, higher being better."""
    train_metric: ClassVar[TrainMetric | None] = None
    scores_against_reference: ClassVar[bool] = False
    """Scored against the original model's outputs (embeddings) rather than dataset targets."""

    # -- evaluation ----------------------------------------------------------------------------
    @abstractmethod
    def score(self, dataset: EvalDataset, outputs: Mapping[str, np.ndarray], output: str,
              reference: np.ndarray | None, decoder: Decoder | None) -> Any:
        """A report (a dataclass with the `metrics` fields) of `outputs` on `dataset`; `output`
        names the output scored when the task scores one."""

    def headline(self, report: Any, metric: str) -> float:
        """The headline number of `report` for `metric` (one of `metrics`), in percent."""
        return 100.0 * float(getattr(report, self.metrics[metric]))

    def headline_text(self, headline: float, metric: str) -> str:
        """A `headline` of `metric` as a person reads it (`surge evaluate` prints it): percent
        unless the task says otherwise."""
        return f"{headline:.2f}%"

    def headline_range(self, metric: str) -> tuple[float, float]:
        """The values `metric`'s headline can take (`surge tune` refuses a `--min-metric`
        outside): 0 to 100 for the default headline, a fraction in percent; any number for a
        task with its own `headline` that does not say."""
        if type(self).headline is Task.headline:
            return 0.0, 100.0
        return -math.inf, math.inf

    def check_metric(self, metric: str | None) -> str:
        """The headline metric's name (the default when None); an unknown one is an error."""
        if metric is None:
            return next(iter(self.metrics))
        if metric not in self.metrics:
            raise MetricError(f"metric {metric!r} is not one of {', '.join(self.metrics)} for "
                              f"task {self.name}")
        return metric

    def decoder(self, parameters: Mapping[str, Any]) -> Decoder | None:
        """How a model's outputs become what `score` compares (None: scored as they are);
        `parameters` are the model config's."""
        return None

    # -- optimize: variant checks --------------------------------------------------------------
    def check(self, reference: np.ndarray, candidate: np.ndarray,
              labels: np.ndarray | None) -> CheckMeasures:
        """Task measures of a variant's first output against the original's (none by default:
        the optimizer always compares the raw errors)."""
        return CheckMeasures()

    def tolerance(self, has_labels: bool) -> Tolerance:
        """The default tolerance a variant must meet."""
        from surge.optimize.variant import Tolerance

        return Tolerance()

    def calibration(self, train: Split, input_name: str, rows: int) -> Inputs:
        """Representative inputs for static int8 quantization: random training rows."""
        order = np.random.default_rng(0).permutation(len(train))[:rows]
        return {input_name: train.inputs[np.sort(order)].numpy()}

    # -- training ------------------------------------------------------------------------------
    def trained_metric(self) -> TrainMetric:
        """`train_metric`; a task without one cannot be trained."""
        if self.train_metric is None:
            raise ConfigError(f"task {self.name} cannot be trained: it has no validation metric")
        return self.train_metric

    def loss(self, model: nn.Module, label_smoothing: float) -> LossFn:
        """The training loss of `model`'s outputs against a batch's targets."""
        raise ConfigError(f"task {self.name} cannot be trained: it has no training loss")

    def check_targets(self, split: Split, what: str) -> None:  # noqa: B027 (optional hook)
        """Refuse, naming `what`, targets the training loss cannot take (default: any)."""

    def flip(self) -> Flip | None:
        """Horizontal-flip augmentation of a batch (None: the task's inputs have no left and
        right)."""
        return None

    def validation_loss_sum(self, model: nn.Module, split: Split, loss_fn: LossFn,
                            device: torch.device) -> float:
        """Sum over `split` of the per-batch mean loss, weighted by batch size."""
        import torch

        total = 0.0
        with torch.inference_mode():
            for start in range(0, len(split), EVAL_BATCH):
                inputs = split.inputs[start:start + EVAL_BATCH].to(device)
                targets = split.labels[start:start + EVAL_BATCH].to(device)
                total += float(loss_fn(model(inputs).float(), targets)) * len(inputs)
        return total

    def validation_metric(self, model: nn.Module, split: Split, device: torch.device) -> float:
        """`train_metric` of `model` on `split`."""
        raise ConfigError(f"task {self.name} cannot be trained: it has no validation metric")

    def publish(self, model: nn.Module, config: TrainConfig, metrics: dict[str, Any],
                example: torch.Tensor) -> Published:
        """Export the trained model into the recipe's repository; `example` is two validation
        inputs the export is traced and verified with."""
        from surge.train.publish import publish

        return publish(model, config, metrics, example)

    def finetune(self, train: Split, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                 seed: int = 0) -> Callable[[Any], None]:
        """A function that trains a module in place on `train` (the optimizer's recovery pass
        for pruned copies; pruning removes channels the rest of the network relied on)."""
        from surge.tasks.finetune import finetune

        return finetune(self, train, epochs, batch_size, lr, seed)

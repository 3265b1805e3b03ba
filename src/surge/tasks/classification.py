"""Classification: one score per class; cross-entropy, accuracy, top-1 agreement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from surge.errors import ConfigError
from surge.evaluate.metrics import ClassificationReport, MetricError, classification_report
from surge.tasks.base import EVAL_BATCH, CheckMeasures, Decoder, Flip, LossFn, Task, TrainMetric
from surge.tasks.data import EvalDataset, Split

if TYPE_CHECKING:
    import torch
    from torch import nn

    from surge.optimize.variant import Tolerance


def flip_images(inputs: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror images [N, C, H, W] where `mask` is set; other inputs have no left and right."""
    if inputs.dim() == 4:
        inputs = inputs.clone()
        inputs[mask] = inputs[mask].flip(3)
    return inputs, labels


class Classification(Task):
    """Outputs [N, classes] scored against class ids [N]."""

    name = "classification"
    metrics: ClassVar[dict[str, str]] = {"accuracy": "accuracy", "macro_f1": "macro_f1"}
    train_metric = TrainMetric(record="val_accuracy", published="test_accuracy",
                               label="accuracy")

    def score(self, dataset: EvalDataset, outputs: Mapping[str, np.ndarray], output: str,
              reference: np.ndarray | None, decoder: Decoder | None) -> ClassificationReport:
        if dataset.labels is None:
            raise MetricError(f"dataset {dataset.name!r} has no labels to score classification")
        return classification_report(dataset.labels, outputs[output], dataset.class_names)

    def check(self, reference: np.ndarray, candidate: np.ndarray,
              labels: np.ndarray | None) -> CheckMeasures:
        if reference.ndim != 2:
            return CheckMeasures()
        top1 = float((reference.argmax(1) == candidate.argmax(1)).mean())
        if labels is None:
            return CheckMeasures(top1_agreement=top1)
        return CheckMeasures(top1_agreement=top1,
                             accuracy=float((candidate.argmax(1) == labels).mean()),
                             reference_accuracy=float((reference.argmax(1) == labels).mean()))

    def tolerance(self, has_labels: bool) -> Tolerance:
        from surge.optimize.variant import Tolerance

        return Tolerance(min_top1=0.9, max_accuracy_drop=1.0 if has_labels else None)

    def loss(self, model: nn.Module, label_smoothing: float) -> LossFn:
        from torch import nn

        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def check_targets(self, split: Split, what: str) -> None:
        """Class ids [N] (whole numbers from 0) or class probabilities [N, classes], what
        cross-entropy takes: float ids failed deep in the loss ('expected scalar type Long')."""
        labels = split.labels
        if labels.dim() == 2 and labels.is_floating_point():
            return
        if labels.dim() != 1:
            raise ConfigError(f"{what} labels have shape {list(labels.shape)}: classification "
                              "trains on class ids [N] or class probabilities [N, classes]")
        if labels.is_floating_point() or labels.dtype.is_complex:
            raise ConfigError(f"{what} labels are {str(labels.dtype).removeprefix('torch.')} "
                              f"values such as {labels[0].item()!r}: classification trains on "
                              "whole class ids (an integer array)")
        if len(labels) and int(labels.min()) < 0:
            raise ConfigError(f"{what} labels hold {int(labels.min())}: class ids start at 0")

    def flip(self) -> Flip | None:
        return flip_images

    def validation_loss_sum(self, model: nn.Module, split: Split, loss_fn: LossFn,
                            device: torch.device) -> float:
        """Plain cross-entropy (no label smoothing): comparable across recipes."""
        import torch
        from torch import nn

        total = 0.0
        with torch.inference_mode():
            for inputs, labels in _batches(split, device):
                logits = model(inputs).float()
                total += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        return total

    def validation_metric(self, model: nn.Module, split: Split, device: torch.device) -> float:
        import torch

        correct = 0.0
        with torch.inference_mode():
            for inputs, labels in _batches(split, device):
                correct += float((model(inputs).argmax(dim=1) == labels).sum())
        return correct / max(len(split), 1)


def _batches(split: Split, device: torch.device) -> Any:
    for start in range(0, len(split), EVAL_BATCH):
        yield (split.inputs[start:start + EVAL_BATCH].to(device),
               split.labels[start:start + EVAL_BATCH].to(device))

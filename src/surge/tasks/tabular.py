"""Tabular classification (binary: default, fraud, click) and the named feature columns that
tabular and ranking models take.

A tabular model is served with one input per feature column, so a request that leaves a column
out is refused with a 400 naming it. Training sees the columns packed side by side into one FP32
tensor (the trainer feeds one tensor per sample); `ColumnModel` unpacks them again at export.
Identifiers ride in FP32 while training, exact below 2**24.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from surge.evaluate.metrics import MetricError
from surge.repository.config import TensorConfig
from surge.tasks.base import EVAL_BATCH, Decoder, LossFn, Task, TrainMetric
from surge.tasks.data import EvalDataset, Split

if TYPE_CHECKING:
    import torch
    from torch import nn

    from surge.train.config import TrainConfig
    from surge.train.publish import Published

CALIBRATION_BINS = 10


# -- binary metrics ----------------------------------------------------------------------------
def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative,
    ties counting one half (the Mann-Whitney statistic over average ranks)."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(labels) != len(scores):
        raise MetricError(f"{len(scores)} scores for {len(labels)} labels")
    # NaN sorts last and ties with nothing, so it would rank as the best score: refuse it.
    refuse_nan(scores, "scores")
    refuse_nan(labels, "labels")
    labels = labels > 0
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise MetricError(f"AUC needs both classes; got {positives} positives and "
                          f"{negatives} negatives")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Tied scores share the mean of the ranks they span.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def refuse_nan(values: np.ndarray, what: str) -> None:
    """A MetricError when `values` hold NaN: every comparison with NaN is false, so metrics
    would quietly count it as a negative or a low score and print a made-up number."""
    if values.dtype.kind in "fc":
        bad = int(np.isnan(values).sum())
        if bad:
            raise MetricError(f"{bad} of {len(values)} {what} are NaN; the metric is undefined "
                              "on them")


def binary_labels(labels: np.ndarray) -> np.ndarray:
    """0/1 labels as booleans; anything else (2, -1, NaN) is refused: it is not a binary
    target, and `> 0` would quietly make 2 a positive and -1 a negative."""
    labels = np.asarray(labels).reshape(-1)
    odd = labels[~np.isin(labels, (0, 1))]
    if len(odd):
        raise MetricError(f"binary labels must be 0 or 1, got {odd[0].item()!r} "
                          f"({len(odd)} of {len(labels)} labels)")
    return labels > 0


@dataclass(frozen=True)
class F1:
    precision: float
    recall: float
    f1: float


def f1_at(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> F1:
    """Precision, recall and F1 of predicting positive where probability >= `threshold`."""
    truth = np.asarray(labels).reshape(-1) > 0
    predicted = np.asarray(probabilities).reshape(-1) >= threshold
    hits = float((truth & predicted).sum())
    precision = hits / predicted.sum() if predicted.any() else 0.0
    recall = hits / truth.sum() if truth.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return F1(float(precision), float(recall), float(f1))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> float:
    """Mean |observed positive rate - mean probability| over equal-width probability bins,
    weighted by how many samples each bin holds (0 = perfectly calibrated)."""
    truth = (np.asarray(labels).reshape(-1) > 0).astype(np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    which = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in np.unique(which):
        members = which == b
        error += members.sum() * abs(truth[members].mean() - probabilities[members].mean())
    return float(error / len(truth))


def positive_probability(array: np.ndarray) -> np.ndarray:
    """P(positive) per row from [N], [N, 1] (the probability) or [N, 2] (both classes)."""
    if array.ndim == 2 and array.shape[1] == 2:
        array = array[:, 1]
    elif array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 1):
        raise MetricError(f"expected probabilities [N], [N, 1] or [N, 2], got shape "
                          f"{list(array.shape)}")
    array = array.reshape(-1).astype(np.float64)
    refuse_nan(array, "probabilities")
    if len(array) and (array.min() < 0.0 or array.max() > 1.0):
        raise MetricError("expected probabilities in [0, 1]; export the model with its sigmoid "
                          "(surge train does)")
    return array


@dataclass(frozen=True)
class BinaryReport:
    """How well probabilities of the positive class score against 0/1 labels."""

    count: int
    positives: int
    auc: float
    threshold: float
    precision: float
    recall: float
    f1: float
    accuracy: float
    brier: float
    ece: float
    calibration: float
    """1 - expected calibration error: the headline form, higher being better."""


def binary_report(labels: np.ndarray, probabilities: np.ndarray,
                  threshold: float = 0.5) -> BinaryReport:
    truth = binary_labels(labels)
    if len(truth) != len(probabilities):
        raise MetricError(f"{len(probabilities)} predictions for {len(truth)} labels")
    if not len(truth):
        raise MetricError("no samples to score")
    f1 = f1_at(truth, probabilities, threshold)
    ece = expected_calibration_error(truth, probabilities)
    return BinaryReport(
        len(truth), int(truth.sum()), roc_auc(truth, probabilities), threshold, f1.precision,
        f1.recall, f1.f1, float(((probabilities >= threshold) == truth).mean()),
        float(((probabilities - truth) ** 2).mean()), ece, 1.0 - ece)


# -- feature columns ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One named model input: [N] when `width` is 0, else [N, width]."""

    name: str
    datatype: str = "FP32"
    width: int = 0

    @property
    def size(self) -> int:
        return max(1, self.width)

    @property
    def numpy(self) -> type[np.generic]:
        return np.int64 if self.datatype == "INT64" else np.float32


def pack(columns: Sequence[Column], arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The columns side by side as FP32 [N, sum of sizes] (what training feeds the model)."""
    missing = [c.name for c in columns if c.name not in arrays]
    if missing:
        raise MetricError(f"missing feature column(s) {missing}")
    rows = len(arrays[columns[0].name])
    return np.concatenate([np.asarray(arrays[c.name], np.float32).reshape(rows, c.size)
                           for c in columns], axis=1)


def unpack(columns: Sequence[Column], packed: np.ndarray) -> dict[str, np.ndarray]:
    """Packed FP32 rows back into one array per column, each in its own datatype."""
    arrays, start = {}, 0
    for column in columns:
        part = packed[:, start:start + column.size]
        arrays[column.name] = (part.reshape(-1) if column.width == 0 else part).astype(column.numpy)
        start += column.size
    if start != packed.shape[1]:
        raise MetricError(f"packed rows have {packed.shape[1]} values, the columns {start}")
    return arrays


class ColumnDataset:
    """Mixin of a dataset whose model takes named feature columns."""

    columns: tuple[Column, ...] = ()


def dataset_columns(config: TrainConfig) -> tuple[Column, ...]:
    """The columns of the recipe's dataset (empty: one packed input)."""
    from surge.tasks.registry import get_dataset

    return tuple(getattr(get_dataset(config.data.dataset), "columns", ()))


def column_model(model: nn.Module, columns: Sequence[Column], probability: bool) -> nn.Module:
    """`model` (packed FP32 rows -> logits) as served: one input per column, and with
    `probability` its logits through a sigmoid."""
    import torch
    from torch import nn

    class ColumnModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.sizes = [c.size for c in columns]

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            rows = tensors[0].shape[0]
            packed = torch.cat([t.reshape(rows, s).float() for t, s in zip(tensors, self.sizes,
                                                                           strict=True)], dim=1)
            out = self.inner(packed)
            return torch.sigmoid(out) if probability else out

    return ColumnModel()


def publish_columns(model: nn.Module, config: TrainConfig, metrics: dict[str, Any],
                    example: torch.Tensor, probability: bool) -> Published:
    """Export `model` with one input per dataset column (`config.model.input_name` when the
    dataset declares none), its logits through a sigmoid when `probability`; verify it."""
    import torch

    from surge.export import export_onnx, export_pt2
    from surge.train.publish import (
        Published,
        removed_if_failed,
        serving_config,
        target,
        write_config_once,
        write_metrics,
    )

    columns = dataset_columns(config) or (Column(config.model.input_name, "FP32",
                                                 int(example[0].numel())),)
    served = column_model(model.eval().cpu(), columns, probability).eval()
    arrays = unpack(columns, example.numpy().reshape(len(example), -1))
    tensors = tuple(torch.from_numpy(arrays[c.name]) for c in columns)
    with torch.inference_mode():
        expected = served(*tensors).numpy()
    repo, name, model_dir, version = target(config)
    version_dir = model_dir / str(version)
    names = [c.name for c in columns]
    files = []
    with removed_if_failed(config, repo, version):
        if "onnx" in config.export.formats:
            files.append(export_onnx(served, tensors, version_dir / "model.onnx", names,
                                     [config.model.output_name]))
        if "pt2" in config.export.formats:
            files.append(export_pt2(served, tensors, version_dir / "model.pt2"))
        served_config = serving_config(config, name)
        # The dataset rides along, so evaluate, optimize and bench find rows with its columns;
        # the inputs say which values each column may hold (the names are the ONNX file's).
        inputs = declared_inputs(model, columns) if "onnx" in config.export.formats else None
        write_config_once(model_dir, served_config.model_copy(update={"parameters": {
            **served_config.parameters, "dataset": config.data.dataset}, "inputs": inputs}))
        verify_columns(repo, name, version, arrays, expected)
    write_metrics(model_dir, metrics, version)
    return Published(repo, name, version, tuple(files))


def declared_inputs(model: nn.Module, columns: Sequence[Column]) -> list[TensorConfig]:
    """The served inputs with the values each may hold: a float column finite (a NaN would
    come out as a plausible score), an id column within the table it indexes when the model
    tells its tables' sizes (`id_rows()`: rows per id column, in column order)."""
    id_rows = getattr(model, "id_rows", None)
    rows = iter(id_rows() if callable(id_rows) else ())
    inputs = []
    for column in columns:
        shape = [-1] if column.width == 0 else [-1, column.width]
        values: dict[str, Any] = {"finite": True}
        if column.datatype != "FP32":
            count = next(rows, None)
            values = {} if count is None else {"min": 0, "max": int(count) - 1}
        inputs.append(TensorConfig(name=column.name, datatype=column.datatype, shape=shape,
                                   **values))
    return inputs


def check_id_ranges(model: nn.Module, columns: Sequence[Column], split: Split,
                    what: str) -> None:
    """Refuse ids of `split`'s packed rows outside the table they index (`model.id_rows()`:
    rows per INT64 column, in column order): a lookup past a table fails deep in the first
    training step ('index out of range in self'), and one of -1 would read the last row."""
    from surge.errors import ConfigError

    id_rows = getattr(model, "id_rows", None)
    if not callable(id_rows) or not len(split) or split.inputs.dim() != 2:
        return
    rows, start = iter(id_rows()), 0
    for column in columns:
        count = next(rows, None) if column.datatype != "FP32" else None
        if count is not None:
            ids = split.inputs[:, start]
            outside = ids[(ids < 0) | (ids > count - 1)]
            if len(outside):
                raise ConfigError(f"{what} column {column.name!r} holds id {outside[0].item():g}, "
                                  f"but the model's table for it has {count} rows (ids 0 to "
                                  f"{count - 1}): size the table in model.kwargs")
        start += column.size


def verify_columns(repo: Any, name: str, version: int, arrays: dict[str, np.ndarray],
                   expected: np.ndarray) -> None:
    """Load the export the way `surge serve` does and compare it with PyTorch."""
    from surge.errors import ModelLoadError
    from surge.repository import Repository

    loaded = Repository(repo).load(name, version)
    got = next(iter(loaded.runner.run(arrays).values()))
    if not np.allclose(got, expected, atol=1e-3, rtol=1e-3):
        raise ModelLoadError(f"{loaded.path}: exported model differs from the trained one "
                             f"(max abs diff {float(np.abs(got - expected).max()):.3g})")


def logits_of(model: nn.Module, split: Split, device: torch.device) -> np.ndarray:
    """The model's raw outputs over a split, in evaluation-sized batches."""
    import torch

    parts = []
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH):
            parts.append(model(split.inputs[start:start + EVAL_BATCH].to(device)).float().cpu())
    return torch.cat(parts).reshape(len(split), -1)[:, -1].numpy()


def check_click_targets(split: Split, what: str, graded: bool = False) -> None:
    """Refuse targets the binary loss and the validation AUC cannot take: 0/1 (`graded`:
    relevance >= 0, the last column of [N, 2] (query, relevance) rows) with both classes
    present. The loss reads `> 0`, so a 2 or a -1 would train without a word, and a split of
    one class fails the AUC only after the first epoch has trained."""
    from surge.errors import ConfigError

    labels = split.labels.numpy()
    labels = labels[:, -1] if labels.ndim == 2 and graded else labels
    try:
        refuse_nan(labels.reshape(-1), f"{what} labels")
        if graded:
            if len(labels) and labels.min() < 0:
                raise MetricError(f"relevance must be >= 0, got {labels.min().item()!r}")
            clicked = labels.reshape(-1) > 0
        else:
            clicked = binary_labels(labels)
    except MetricError as exc:
        raise ConfigError(f"{what} labels: {exc}") from None
    if len(clicked) and (clicked.all() or not clicked.any()):
        raise ConfigError(f"{what} labels hold one class only ({len(clicked)} "
                          f"{'positive' if clicked.all() else 'negative'}): the AUC that "
                          "validates each epoch needs both")


def binary_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits; targets are 0/1 (the last column when there are two)."""
    from torch.nn import functional

    if targets.dim() == 2:
        targets = targets[:, -1]
    return functional.binary_cross_entropy_with_logits(
        outputs.reshape(-1).float(), (targets > 0).float())


# -- the task ----------------------------------------------------------------------------------
class TabularClassification(Task):
    """Binary classification of feature rows (credit default, fraud): outputs are P(positive)
    as [N], [N, 1] or [N, 2]; labels are 0/1 [N]. F1 and accuracy are taken at `threshold`."""

    name = "tabular-classification"
    metrics: ClassVar[dict[str, str]] = {"auc": "auc", "f1": "f1", "calibration": "calibration",
                                         "accuracy": "accuracy"}
    train_metric = TrainMetric(record="val_auc", published="val_auc", label="AUC",
                               per_sample=False)

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise MetricError(f"threshold must lie in (0, 1), got {threshold}")
        self.threshold = threshold

    def score(self, dataset: EvalDataset, outputs: Mapping[str, np.ndarray], output: str,
              reference: np.ndarray | None, decoder: Decoder | None) -> BinaryReport:
        if dataset.labels is None:
            raise MetricError(f"dataset {dataset.name!r} has no labels to score {self.name}")
        return binary_report(dataset.labels, positive_probability(outputs[output]),
                             self.threshold)

    def loss(self, model: nn.Module, label_smoothing: float) -> LossFn:
        return binary_loss

    def check_targets(self, split: Split, what: str) -> None:
        check_click_targets(split, what)

    def validation_metric(self, model: nn.Module, split: Split, device: torch.device) -> float:
        return roc_auc(split.labels.numpy(), logits_of(model, split, device))

    def publish(self, model: nn.Module, config: TrainConfig, metrics: dict[str, Any],
                example: torch.Tensor) -> Published:
        return publish_columns(model, config, metrics, example, probability=True)

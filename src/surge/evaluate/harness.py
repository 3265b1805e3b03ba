"""`evaluate(model_or_variant, dataset, task)`: run a model over a dataset in batches and score it.

Datasets are in memory: the inputs the model takes (batched on dim 0) plus what scores them —
class labels, COCO ground truth, or nothing when a task scores against a reference run. How the
outputs are scored is the task's business (`surge.tasks`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

import numpy as np
from rich.progress import Progress

from surge.errors import ConfigError, InputError, SurgeError
from surge.evaluate.metrics import MetricError
from surge.repository import LoadedModel, Repository
from surge.runtimes import Runner
from surge.tasks import DataOptions, Decoder, EvalDataset, Task, get_dataset, get_task

__all__ = ["EvalDataset", "EvalReport", "check_metric", "evaluate", "evaluate_ref",
           "load_dataset", "run_dataset"]


@dataclass
class EvalReport:
    """The result of one evaluation. `metric` is the headline number in percent."""

    task: str
    model: str
    dataset: str
    count: int
    seconds: float
    metric_name: str
    metric: float
    details: Any  # the task's report (ClassificationReport, CocoReport, ...)
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready headline numbers (without the raw outputs)."""
        return {"task": self.task, "model": self.model, "dataset": self.dataset,
                "count": self.count, "seconds": self.seconds, "metric_name": self.metric_name,
                "metric": self.metric}


def load_dataset(spec: str | Path, input_name: str = "image") -> EvalDataset:
    """The evaluation set of a registered dataset (see `surge data list`), an .npz of input
    arrays plus `labels` (or `image_ids` with a COCO .json beside it), a COCO split directory
    (`images.npy` + `annotations.json`), or a 'package.module:function' returning a Dataset."""
    if not str(spec).strip():  # Path("") is the current folder, read as a split directory
        raise ConfigError(f"dataset {str(spec)!r}: give a dataset name or file")
    _refuse_non_archive(spec)
    try:
        dataset = get_dataset(spec).evaluation(input_name, DataOptions())
    except SurgeError:
        raise
    # EOFError: an empty file (click would print a bare "aborted" for it)
    except (ValueError, KeyError, TypeError, OSError, EOFError, BadZipFile) as exc:
        raise ConfigError(f"dataset {str(spec)!r} cannot be read ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None
    _check_per_sample(dataset)
    return dataset


def _refuse_non_archive(spec: str | Path) -> None:
    """An .npz file that is no zip archive at all: NumPy would try to unpickle it and say the
    file 'contains pickled (object) data', which is not what is wrong with it."""
    path = Path(spec)
    if path.suffix != ".npz" or not path.is_file():
        return
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ConfigError(f"dataset {str(spec)!r} cannot be read ({exc.strerror})") from None
    if not head.startswith(b"PK"):
        raise ConfigError(f"dataset {str(spec)!r} is not an .npz archive "
                          f"({'an empty file' if not head else 'no zip header'})")


def _check_per_sample(dataset: EvalDataset) -> None:
    """One label (and image id) per sample: with `samples` the first N of each would be paired
    and scored, whatever the rows after them say."""
    for what, array in (("labels", dataset.labels), ("image_ids", dataset.image_ids)):
        if array is not None and (np.ndim(array) == 0 or len(array) != len(dataset)):
            count = "a single value" if np.ndim(array) == 0 else f"{len(array)} {what}"
            raise ConfigError(f"dataset {dataset.name!r} has {len(dataset)} samples but "
                              f"{count}: give one per sample")


def _check_input_names(names: list[str], dataset: EvalDataset) -> None:
    """Every model input among the dataset's arrays. A one-array dataset (images, token ids)
    keys its array by the model's first input, so that name is the model's, not the data's:
    said as what the array is, not as a column the dataset would have."""
    missing = [n for n in names if n not in dataset.inputs]
    if not missing:
        return
    arrays = ", ".join(f"{name!r} {array.dtype} {list(np.shape(array))}"
                       for name, array in dataset.inputs.items())
    if len(dataset.inputs) == 1 and names[0] in dataset.inputs:
        array = dataset.inputs[names[0]]
        arrays = f"one array, {array.dtype} {list(np.shape(array))}"
    raise MetricError(f"dataset {dataset.name!r} lacks model input(s) {missing}: the model "
                      f"takes {names}, the dataset holds {arrays}; give a dataset with an "
                      "array for each model input")


def _runner_of(model: Runner | LoadedModel) -> tuple[Runner, str]:
    if isinstance(model, LoadedModel):
        name = f"{model.name}@{model.variant}" if model.variant else model.name
        return model.runner, name
    return model, type(model).__name__


def _batches(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def run_dataset(
    runner: Runner, dataset: EvalDataset, batch_size: int = 256,
    progress: Progress | None = None, description: str = "evaluate",
    on_batch: Callable[[dict[str, np.ndarray], slice], None] | None = None,
) -> dict[str, np.ndarray]:
    """All outputs of `runner` over `dataset`, concatenated on dim 0."""
    signature = runner.signature
    if signature.max_batch_size:
        batch_size = min(batch_size, signature.max_batch_size)
    _check_input_names(signature.input_names, dataset)
    if not len(dataset):  # no outputs to score: every task would fail on them differently
        raise MetricError(f"dataset {dataset.name!r} has no samples")
    try:  # here, not as an engine's error on the first batch
        signature.validate_inputs({n: dataset.inputs[n][:1] for n in signature.input_names})
    except InputError as exc:
        raise MetricError(f"dataset {dataset.name!r} does not fit the model: {exc}") from None
    task_id = progress.add_task(description, total=len(dataset)) if progress else None
    chunks: dict[str, list[np.ndarray]] = {}
    for part in _batches(len(dataset), batch_size):
        batch = {n: dataset.inputs[n][part] for n in signature.input_names}
        _check_rows(runner, dataset, batch, part)
        outputs = runner.run(batch)
        if on_batch is not None:
            on_batch(outputs, part)
        for name, array in outputs.items():
            chunks.setdefault(name, []).append(array)
        if progress is not None and task_id is not None:
            progress.advance(task_id, part.stop - part.start)
    return {name: np.concatenate(arrays) for name, arrays in chunks.items()}


def _check_rows(runner: Runner, dataset: EvalDataset, batch: dict[str, np.ndarray],
                part: slice) -> None:
    """Each batch against the values the model's config declares, as `surge serve` checks each
    request: a NaN feature or an id of -1 past the first row would otherwise be scored (ONNX
    Gather reads -1 from the end of its table) into a figure nobody could trust."""
    try:
        runner.signature.validate_inputs(batch)
    except InputError as exc:
        raise MetricError(f"dataset {dataset.name!r}, rows {part.start} to {part.stop - 1}: "
                          f"{exc}") from None


def evaluate(
    model: Runner | LoadedModel,
    dataset: EvalDataset,
    task: str | Task,
    *,
    batch_size: int = 256,
    output: str | None = None,
    reference: np.ndarray | None = None,
    decoder: Decoder | None = None,
    progress: Progress | None = None,
    metric: str | None = None,
) -> EvalReport:
    """Run `model` over `dataset` and score it for `task` (a registered name, a
    'package.module:Class', or a Task).

    `metric` names the headline (the number an accuracy budget applies to): one of the task's
    `metrics`, default the first (accuracy, mAP@[.5:.95], mean cosine, ...). `output` is the
    output scored (default: the first); `reference` the original model's outputs, for tasks
    scored against them; `decoder` turns outputs into what the task compares (default: the
    task's, from the model config's parameters).
    """
    task = get_task(task)
    metric = task.check_metric(metric)
    runner, name = _runner_of(model)
    output = output or runner.signature.output_names[0]
    if decoder is None:
        decoder = task.decoder(model.config.parameters if isinstance(model, LoadedModel) else {})
    started = time.perf_counter()
    outputs = run_dataset(runner, dataset, batch_size, progress, f"evaluate {name}")
    seconds = time.perf_counter() - started
    details = task.score(dataset, outputs, output, reference, decoder)
    return EvalReport(task.name, name, dataset.name, len(dataset), seconds, metric,
                      task.headline(details, metric), details, outputs)


def check_metric(task: str | Task, metric: str | None) -> str:
    """The headline metric's name for `task` (the task's default when None); checks both."""
    return get_task(task).check_metric(metric)


def evaluate_ref(
    repo: Repository, ref: str, dataset: EvalDataset, task: str | Task, **kwargs: Any
) -> EvalReport:
    """Load `name` or `name@variant` from `repo` and evaluate it."""
    return evaluate(repo.load(ref), dataset, task, **kwargs)

"""`evaluate(model_or_variant, dataset, task)`: run a model over a dataset in batches and score it.

Datasets are in memory: the inputs the model takes (batched on dim 0) plus what scores them —
class labels, COCO ground truth, or nothing for embeddings (scored against a reference run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.progress import Progress

from surge.evaluate.metrics import (
    ClassificationReport,
    CocoReport,
    EmbeddingReport,
    MetricError,
    classification_report,
    coco_map,
    embedding_fidelity,
)
from surge.repository import LoadedModel, Repository
from surge.runtimes import Runner

Task = Literal["classification", "detection", "embedding"]
TASKS: tuple[str, ...] = ("classification", "detection", "embedding")
FASHION_MNIST = "fashion-mnist"

# decoder(outputs of one batch, COCO image ids of that batch) -> COCO results-format detections
Decoder = Callable[[Mapping[str, np.ndarray], np.ndarray], list[dict[str, Any]]]


@dataclass
class EvalDataset:
    """Model inputs (dim 0 = sample) and the targets that score the outputs."""

    name: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None  # classification: class ids [N]
    class_names: list[str] | None = None
    ground_truth: dict[str, Any] | None = None  # detection: COCO JSON
    image_ids: np.ndarray | None = None  # detection: COCO image id of each sample

    def __post_init__(self) -> None:
        sizes = {name: len(array) for name, array in self.inputs.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise MetricError(f"dataset {self.name!r}: inputs need one common length, got {sizes}")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, count: int) -> EvalDataset:
        """The first `count` samples (for quick evaluations in a time budget)."""
        image_ids = None if self.image_ids is None else self.image_ids[:count]
        ground_truth = self.ground_truth
        if ground_truth is not None and image_ids is not None:
            ground_truth = _coco_subset(ground_truth, {int(i) for i in image_ids})
        return EvalDataset(
            self.name, {k: v[:count] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:count], self.class_names,
            ground_truth, image_ids,
        )


def _coco_subset(ground_truth: dict[str, Any], keep: set[int]) -> dict[str, Any]:
    """COCO ground truth restricted to the images in `keep`: images left out would otherwise
    count as missed objects and pull mAP down."""
    return {
        **ground_truth,
        "images": [im for im in ground_truth.get("images", []) if im["id"] in keep],
        "annotations": [a for a in ground_truth.get("annotations", []) if a["image_id"] in keep],
    }


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
    details: ClassificationReport | CocoReport | EmbeddingReport
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready headline numbers (without the raw outputs)."""
        return {"task": self.task, "model": self.model, "dataset": self.dataset,
                "count": self.count, "seconds": self.seconds, "metric_name": self.metric_name,
                "metric": self.metric}


def load_dataset(spec: str | Path, input_name: str = "image") -> EvalDataset:
    """`fashion-mnist` (the built-in test split), an .npz of input arrays plus `labels`, or a
    detection split directory (`images.npy` + COCO `annotations.json`).

    An .npz for detection holds the inputs and `image_ids`, with the COCO ground truth in a
    JSON file of the same name beside it.
    """
    if str(spec) == FASHION_MNIST:
        from surge.data.fashion_mnist import FASHION_CLASSES, load_fashion_mnist, to_model_input

        images, labels = load_fashion_mnist("test")
        return EvalDataset(FASHION_MNIST, {input_name: to_model_input(images)}, labels,
                           list(FASHION_CLASSES))
    path = Path(spec)
    if path.is_dir():
        return _detection_split(path, input_name)
    if path.suffix != ".npz" or not path.is_file():
        raise MetricError(f"--data {spec}: expected 'fashion-mnist', an existing .npz file or a "
                          "detection split directory")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    labels = arrays.pop("labels", None)
    image_ids = arrays.pop("image_ids", None)
    ground_truth = None
    if image_ids is not None:
        import json

        gt_path = path.with_suffix(".json")
        if not gt_path.is_file():
            raise MetricError(f"{path} has image_ids but no COCO ground truth at {gt_path}")
        ground_truth = json.loads(gt_path.read_text())
    return EvalDataset(path.stem, arrays, labels, None, ground_truth, image_ids)


def _detection_split(directory: Path, input_name: str) -> EvalDataset:
    """A split as `surge data fashion-detection` writes it: row i of images.npy is COCO image
    id i + 1."""
    import json

    images_file, annotations_file = directory / "images.npy", directory / "annotations.json"
    if not images_file.is_file() or not annotations_file.is_file():
        raise MetricError(f"--data {directory}: a detection split directory needs images.npy "
                          "and annotations.json")
    images = np.load(images_file, allow_pickle=False)
    ground_truth = json.loads(annotations_file.read_text())
    return EvalDataset(directory.name, {input_name: images}, ground_truth=ground_truth,
                       image_ids=np.arange(1, len(images) + 1))


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
    missing = [n for n in signature.input_names if n not in dataset.inputs]
    if missing:
        raise MetricError(f"dataset {dataset.name!r} lacks model input(s) {missing}; "
                          f"it has {list(dataset.inputs)}")
    task_id = progress.add_task(description, total=len(dataset)) if progress else None
    chunks: dict[str, list[np.ndarray]] = {}
    for part in _batches(len(dataset), batch_size):
        outputs = runner.run({n: dataset.inputs[n][part] for n in signature.input_names})
        if on_batch is not None:
            on_batch(outputs, part)
        for name, array in outputs.items():
            chunks.setdefault(name, []).append(array)
        if progress is not None and task_id is not None:
            progress.advance(task_id, part.stop - part.start)
    return {name: np.concatenate(arrays) for name, arrays in chunks.items()}


def evaluate(
    model: Runner | LoadedModel,
    dataset: EvalDataset,
    task: str,
    *,
    batch_size: int = 256,
    output: str | None = None,
    reference: np.ndarray | None = None,
    decoder: Decoder | None = None,
    progress: Progress | None = None,
    metric: str | None = None,
) -> EvalReport:
    """Run `model` over `dataset` and score it for `task`.

    `metric` names the headline (the number an accuracy budget applies to): one of
    `METRICS[task]`, default the first (accuracy, mAP@[.5:.95], mean cosine).

    classification: accuracy/top-k/F1 of output `output` (default: the first) against labels.
    embedding: cosine fidelity of `output` to `reference` (the fp32 model's outputs).
    detection: `decoder` turns each batch's outputs into COCO detections, scored by COCO mAP.
    """
    metric = check_metric(task, metric)
    runner, name = _runner_of(model)
    output = output or runner.signature.output_names[0]
    detections: list[dict[str, Any]] = []
    on_batch = _detection_collector(task, dataset, decoder, detections)
    started = time.perf_counter()
    outputs = run_dataset(runner, dataset, batch_size, progress, f"evaluate {name}", on_batch)
    seconds = time.perf_counter() - started
    details = _score(task, dataset, outputs[output], reference, detections)
    return EvalReport(task, name, dataset.name, len(dataset), seconds, metric,
                      100.0 * float(getattr(details, METRICS[task][metric])), details, outputs)


# task -> headline metric name -> report field (a fraction; headlines are in percent)
METRICS: dict[str, dict[str, str]] = {
    "classification": {"accuracy": "accuracy", "macro_f1": "macro_f1"},
    "detection": {"mAP": "map", "mAP50": "map50", "mAP75": "map75"},
    "embedding": {"cosine": "mean_cosine", "min_cosine": "min_cosine"},
}


def check_metric(task: str, metric: str | None) -> str:
    """The headline metric's name for `task` (the task's default when None); checks both."""
    if task not in TASKS:
        raise MetricError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    names = METRICS[task]
    if metric is None:
        return next(iter(names))
    if metric not in names:
        raise MetricError(f"metric {metric!r} is not one of {', '.join(names)} for task {task}")
    return metric


def _detection_collector(
    task: str, dataset: EvalDataset, decoder: Decoder | None, sink: list[dict[str, Any]]
) -> Callable[[dict[str, np.ndarray], slice], None] | None:
    if task != "detection":
        return None
    if decoder is None:
        raise MetricError("detection evaluation needs a decoder from outputs to COCO detections")
    if dataset.image_ids is None or dataset.ground_truth is None:
        raise MetricError(f"dataset {dataset.name!r} has no image_ids/COCO ground truth")
    image_ids = dataset.image_ids

    def collect(outputs: dict[str, np.ndarray], part: slice) -> None:
        sink.extend(decoder(outputs, image_ids[part]))

    return collect


def _score(
    task: str, dataset: EvalDataset, scores: np.ndarray, reference: np.ndarray | None,
    detections: list[dict[str, Any]],
) -> ClassificationReport | CocoReport | EmbeddingReport:
    if task == "classification":
        if dataset.labels is None:
            raise MetricError(f"dataset {dataset.name!r} has no labels to score classification")
        return classification_report(dataset.labels, scores, dataset.class_names)
    if task == "embedding":
        if reference is None:
            raise MetricError("embedding evaluation needs the reference model's outputs")
        return embedding_fidelity(reference, scores)
    assert dataset.ground_truth is not None  # checked before the run
    return coco_map(dataset.ground_truth, detections)


def evaluate_ref(
    repo: Repository, ref: str, dataset: EvalDataset, task: str, **kwargs: Any
) -> EvalReport:
    """Load `name` or `name@variant` from `repo` and evaluate it."""
    return evaluate(repo.load(ref), dataset, task, **kwargs)

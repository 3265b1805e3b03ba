"""Tasks: what a kind of problem needs from data, and how its models train, score and publish.

    task = get_task("classification")          # or "detection", "embedding", "pkg.mod:Class"
    dataset = get_dataset("synthetic")         # or a plugin's name, an .npz, a split directory

See `surge.tasks.base.Task` for the interface and `surge.tasks.registry` for how plugins add
tasks, datasets and model builders.
"""

from surge.tasks.base import CheckMeasures, Decoder, Flip, LossFn, Task, TrainMetric
from surge.tasks.data import DataOptions, Dataset, EvalDataset, Split
from surge.tasks.registry import REGISTRY, Registry, get_dataset, get_task, resolve_builder

__all__ = [
    "REGISTRY",
    "CheckMeasures",
    "DataOptions",
    "Dataset",
    "Decoder",
    "EvalDataset",
    "Flip",
    "LossFn",
    "Registry",
    "Split",
    "Task",
    "TrainMetric",
    "get_dataset",
    "get_task",
    "resolve_builder",
]

"""The task registry: tasks, datasets and model builders by name.

The library registers its own tasks (classification, detection, embedding) and generic datasets
(synthetic, coco). Everything else comes from plugins: an installed distribution declares
entry points in the group `surge.plugins`, each a `register(registry)` callable, loaded on the
first lookup. A name not registered may also be given as `package.module:attr` (a Task class,
or a function returning a Dataset), trusted like a model factory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from surge.errors import ConfigError
from surge.tasks.base import Task
from surge.tasks.data import Dataset, NpzDataset, SyntheticDataset
from surge.trusted import import_object

PLUGIN_GROUP = "surge.plugins"
DatasetFactory = Callable[[], Dataset]


def normalize(name: str) -> str:
    """Registered names are case- and separator-insensitive: fashion_mnist == fashion-mnist."""
    return name.strip().lower().replace("_", "-")


class Registry:
    """Names -> tasks, dataset readers and model builders ('package.module:factory')."""

    def __init__(self, group: str | None = PLUGIN_GROUP) -> None:
        self._tasks: dict[str, type[Task]] = {}
        self._datasets: dict[str, DatasetFactory] = {}
        self._models: dict[str, str] = {}
        self._group = group
        self._loaded = group is None

    def add_task(self, task: type[Task]) -> None:
        self._tasks[normalize(task.name)] = task

    def add_dataset(self, name: str, factory: DatasetFactory) -> None:
        self._datasets[normalize(name)] = factory

    def add_model(self, name: str, builder: str) -> None:
        """`builder` is the trusted 'package.module:factory' the name stands for."""
        self._models[normalize(name)] = builder

    def _load_plugins(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # a failing plugin is reported once, not re-run on every lookup
        assert self._group is not None
        for point in entry_points(group=self._group):
            try:
                point.load()(self)
            except Exception as exc:
                raise ConfigError(f"plugin {point.name!r} ({point.value}) failed to register: "
                                  f"{type(exc).__name__}: {exc}") from exc

    # -- lookups -------------------------------------------------------------------------------
    def task_names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._tasks)

    def dataset_names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._datasets)

    def model_names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._models)

    def task(self, spec: str | Task) -> Task:
        """A registered task by name, a Task instance, or a 'package.module:Class'."""
        if isinstance(spec, Task):
            return spec
        self._load_plugins()
        found = self._tasks.get(normalize(spec))
        if found is not None:
            return found()
        if ":" not in spec:
            raise ConfigError(f"unknown task {spec!r}; expected one of "
                              f"{', '.join(self.task_names())} or a 'package.module:Class'")
        task = import_object(spec, "task")
        if isinstance(task, type) and issubclass(task, Task):
            if inspect.isabstract(task):  # Task itself, or a subclass missing a method
                missing = ", ".join(sorted(getattr(task, "__abstractmethods__", ())))
                raise ConfigError(f"task {spec!r} is abstract (it does not define {missing})")
            return task()
        raise ConfigError(f"task {spec!r} is {type(task).__name__}, not a surge.tasks.Task class")

    def dataset(self, spec: str | Path) -> Dataset:
        """A registered dataset, 'package.module:function', an .npz file or a split directory."""
        self._load_plugins()
        text = str(spec)
        factory = self._datasets.get(normalize(text))
        if factory is not None:
            return factory()
        path = Path(text)
        if path.is_dir():
            from surge.tasks.coco import SplitDirectory

            return SplitDirectory(path)
        if path.suffix == ".npz" and path.is_file():
            return NpzDataset(path)
        if ":" in text and not path.exists():
            dataset = import_object(text, "dataset")()
            if not isinstance(dataset, Dataset):
                raise ConfigError(f"dataset {text!r} returned {type(dataset).__name__}, not a "
                                  "surge.tasks.Dataset")
            return dataset
        raise ConfigError(f"dataset {text!r}: expected one of {', '.join(self.dataset_names())}, "
                          "an existing .npz file, a split directory or 'package.module:function'")

    def builder(self, spec: str) -> str:
        """The 'package.module:factory' of a registered model name (other specs as they are)."""
        self._load_plugins()
        return self._models.get(normalize(spec), spec)


def _builtin() -> Registry:
    from surge.tasks.classification import Classification
    from surge.tasks.coco import CocoSplits
    from surge.tasks.detection import Detection
    from surge.tasks.embedding import Embedding
    from surge.tasks.forecasting import Forecasting, Regression
    from surge.tasks.ranking import Ranking
    from surge.tasks.tabular import TabularClassification

    registry = Registry()
    for task in (Classification, Detection, Embedding, Ranking, TabularClassification,
                 Regression, Forecasting):
        registry.add_task(task)
    registry.add_dataset("synthetic", SyntheticDataset)
    registry.add_dataset("coco", CocoSplits)
    return registry


REGISTRY = _builtin()


def get_task(spec: str | Task) -> Task:
    return REGISTRY.task(spec)


def get_dataset(spec: str | Path) -> Dataset:
    return REGISTRY.dataset(spec)


def resolve_builder(spec: str) -> str:
    return REGISTRY.builder(spec)

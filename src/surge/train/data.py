"""Training data held in memory as tensors, and the per-rank batches a parallelism mode needs.

Batches are gathered by indexing whole tensors with a batch of indices: per-sample collation
through a DataLoader costs more than the small CNNs' forward pass on a 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DistributedSampler

from surge.errors import ConfigError, first_line
from surge.tasks import DataOptions, Dataset, Flip, Split, get_dataset
from surge.train.config import DataConfig, TrainConfig

__all__ = ["Split", "check_model_fits", "check_validation", "eval_shard", "export_example",
           "load_dataset", "steps_per_epoch", "train_batches"]


def data_options(config: DataConfig, input_shape: list[int], seed: int) -> DataOptions:
    return DataOptions(root=Path(config.root) if config.root else None,
                       train_size=config.train_size, test_size=config.test_size,
                       classes=config.classes, input_shape=tuple(input_shape), seed=seed)


def dataset_of(config: DataConfig) -> Dataset:
    return get_dataset(config.dataset)


def load_dataset(config: DataConfig, input_shape: list[int], seed: int) -> tuple[Split, Split]:
    """(train, validation) splits of the config's dataset."""
    return dataset_of(config).training(data_options(config, input_shape, seed))


def train_batches(
    split: Split, global_batch: int, epoch: int, seed: int, replicas: int, rank: int,
    flip: Flip | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches for one epoch: a 1/replicas share of each global batch, each sample
    mirrored by the task's `flip` with probability 1/2 (None: never).

    `replicas=1` gives every rank the whole global batch (pipeline stages all see the same
    order). The order depends only on (seed, epoch), so a resumed run replays the same epoch.
    """
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(split)),  # type: ignore[arg-type]  # a Sized is all it indexes
        num_replicas=replicas, rank=rank, shuffle=True, seed=seed, drop_last=True,
    )
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + rank)
    for indices in BatchSampler(sampler, global_batch // replicas, drop_last=True):
        index = torch.tensor(indices)
        inputs, labels = split.inputs[index], split.labels[index]
        if flip is not None:
            mask = torch.rand(len(index), generator=generator) < 0.5
            inputs, labels = flip(inputs, labels, mask)
        yield inputs, labels


def steps_per_epoch(split: Split, global_batch: int) -> int:
    steps = len(split) // global_batch
    if steps < 1:
        raise ConfigError(
            f"batch_size {global_batch} is larger than the training set ({len(split)} samples)"
        )
    return steps


def check_validation(split: Split) -> None:
    """Each epoch is validated and the best one exported: with no validation samples the run
    would train to the end and then fail on an empty metric."""
    if not len(split):
        raise ConfigError("the validation split of data.dataset has no samples: nothing to "
                          "score the epochs and choose the best one by")


def export_example(split: Split) -> torch.Tensor:
    """Two validation inputs to trace and check the export with. A split of one sample gives
    it twice: exported from a batch of one, torch.export fixes the batch dimension at 1 and
    refuses the dynamic batch the repository serves."""
    return split.inputs[torch.tensor([0, min(1, len(split) - 1)])].cpu()


def check_model_fits(model: torch.nn.Module, config: TrainConfig, train: Split,
                     test: Split) -> None:
    """Refuse, before any step, a model that cannot take the data: ids past its embedding
    tables, or a width the data does not have (model.kwargs features=8 for 12 columns) would
    fail in the first batch with a torch traceback from every rank."""
    from surge.errors import shown
    from surge.tasks.tabular import check_id_ranges, dataset_columns

    columns = dataset_columns(config)
    for split, what in ((train, "the training split's"), (test, "the validation split's")):
        check_id_ranges(model, columns, split, what)
    was_training = model.training
    model.eval()  # no batch statistics or dropout: the weights and RNG stay as they were
    try:
        with torch.no_grad():
            output = model(train.inputs[:2])
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        reason = first_line(exc)
        raise ConfigError(
            f"model.builder {config.model.builder!r} with model.kwargs "
            f"{shown(config.model.kwargs)} cannot take the training inputs of data.dataset "
            f"{config.data.dataset!r} (one sample {list(train.inputs.shape[1:])}): "
            f"{type(exc).__name__}: {reason}") from None
    finally:
        model.train(was_training)
    if config.task == "classification" and isinstance(output, torch.Tensor) \
            and output.dim() == 2:
        check_classes(output.shape[-1], config, train, test)


def check_classes(classes: int, config: TrainConfig, train: Split, test: Split) -> None:
    """A classifier of `classes` scores per sample takes class ids below `classes` (a larger
    one failed the first step with cross-entropy's IndexError traceback), and is exported with
    as many `export.labels` (the repository refuses another count when it loads the export,
    after the whole run)."""
    builder = f"model.builder {config.model.builder!r} gives {classes} class scores per sample"
    for split, what in ((train, "the training split's"), (test, "the validation split's")):
        labels = split.labels
        if labels.dim() == 1 and len(labels) and not labels.is_floating_point() \
                and int(labels.max()) >= classes:
            raise ConfigError(f"{what} labels hold class id {int(labels.max())}, but {builder}: "
                              f"give the model {int(labels.max()) + 1} classes (model.kwargs)")
        if labels.dim() == 2 and labels.shape[1] != classes:
            raise ConfigError(f"{what} labels are probabilities of {labels.shape[1]} classes, "
                              f"but {builder}")
    names = config.export.labels
    if names is not None and len(names) != classes:
        raise ConfigError(f"export.labels lists {len(names)} names, but {builder}: list "
                          f"{classes} labels, one per class, or leave export.labels out")


def eval_shard(split: Split, replicas: int, rank: int) -> Split:
    """Every replicas-th sample from `rank`: shards cover the split exactly once."""
    return Split(split.inputs[rank::replicas], split.labels[rank::replicas])

"""Datasets held in memory as tensors, and the per-rank batches a parallelism mode needs.

Batches are gathered by indexing whole tensors with a batch of indices: per-sample collation
through a DataLoader costs more than the small CNNs' forward pass on a 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DistributedSampler

from surge.errors import ConfigError
from surge.train.config import DataConfig


@dataclass(frozen=True)
class Split:
    """Inputs [N, ...] and their labels: integer classes [N], or packed detection targets
    [N, M, 5] (x1, y1, x2, y2, class; class -1 = padding) for uint8 canvases [N, H, W]."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _fashion_mnist(config: DataConfig) -> tuple[Split, Split]:
    from surge.data.fashion_mnist import load_fashion_mnist, to_model_input

    root = Path(config.root) if config.root else None
    splits = []
    for name, size in (("train", config.train_size), ("test", config.test_size)):
        images, labels = load_fashion_mnist(name, root)
        images, labels = images[:size], labels[:size]
        splits.append(Split(torch.from_numpy(to_model_input(images)), torch.from_numpy(labels)))
    return splits[0], splits[1]


def _synthetic(config: DataConfig, input_shape: list[int], seed: int) -> tuple[Split, Split]:
    """A learnable task: labels are the argmax of a fixed random linear map of the inputs."""
    generator = torch.Generator().manual_seed(seed + 1234)
    features = int(torch.tensor(input_shape).prod())
    teacher = torch.randn(features, config.classes, generator=generator)
    splits = []
    for size in (config.train_size or 256, config.test_size or 128):
        inputs = torch.rand(size, *input_shape, generator=generator)
        labels = ((inputs.reshape(size, -1) - 0.5) @ teacher).argmax(dim=1)
        splits.append(Split(inputs, labels))
    return splits[0], splits[1]


def _fashion_detection(config: DataConfig) -> tuple[Split, Split]:
    """The train and val splits of a `surge data fashion-detection` directory."""
    from surge.detection.training import load_tensors

    assert config.path is not None
    root = Path(config.path)
    splits = []
    for name, size in (("train", config.train_size), ("val", config.test_size)):
        if not (root / name).is_dir():
            raise ConfigError(f"{root / name}: no detection split (run `surge data "
                              f"fashion-detection {root}` first)")
        splits.append(Split(*load_tensors(root / name, size)))
    return splits[0], splits[1]


def load_dataset(config: DataConfig, input_shape: list[int], seed: int) -> tuple[Split, Split]:
    """(train, test) splits for the config's dataset (for detection: train and val)."""
    if config.dataset == "synthetic":
        return _synthetic(config, input_shape, seed)
    if config.dataset == "fashion_detection":
        return _fashion_detection(config)
    return _fashion_mnist(config)


def train_batches(
    split: Split, global_batch: int, epoch: int, seed: int, replicas: int, rank: int,
    flip: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches for one epoch: a 1/replicas share of each global batch.

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
        if flip and labels.dim() == 3:  # detection canvases: mirror their boxes too
            from surge.detection.training import hflip

            mask = torch.rand(len(index), generator=generator) < 0.5
            inputs, labels = hflip(inputs, labels, mask)
        elif flip and inputs.dim() == 4:  # clothing is left/right symmetric
            mask = torch.rand(len(index), generator=generator) < 0.5
            inputs[mask] = inputs[mask].flip(3)
        yield inputs, labels


def steps_per_epoch(split: Split, global_batch: int) -> int:
    steps = len(split) // global_batch
    if steps < 1:
        raise ConfigError(
            f"batch_size {global_batch} is larger than the training set ({len(split)} samples)"
        )
    return steps


def eval_shard(split: Split, replicas: int, rank: int) -> Split:
    """Every replicas-th sample from `rank`: shards cover the split exactly once."""
    return Split(split.inputs[rank::replicas], split.labels[rank::replicas])

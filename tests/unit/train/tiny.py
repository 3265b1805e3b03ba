"""Tiny models, recipes and a process launcher for the training tests (CPU, gloo)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
import yaml
from torch import nn

from surge.server.sockets import unused_port
from surge.train.distributed import init_distributed, shutdown

FEATURES, CLASSES = 8, 4


class TinyMLP(nn.Sequential):
    """Three Linear layers: big enough to split into stages and to shard, fast to run."""

    def __init__(self, features: int = FEATURES, hidden: int = 16, classes: int = CLASSES) -> None:
        super().__init__(
            nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes),
        )


def tiny_mlp(features: int = FEATURES, hidden: int = 16, classes: int = CLASSES) -> TinyMLP:
    return TinyMLP(features, hidden, classes)


class SkipMLP(nn.Module):
    """Linear layers with a shortcut around the middle ones: split at `last`, the first stage
    hands the next two tensors (the main path and the shortcut's input)."""

    def __init__(self, features: int = FEATURES, hidden: int = 16, classes: int = CLASSES) -> None:
        super().__init__()
        self.first = nn.Linear(features, hidden)
        self.middle = nn.Linear(hidden, hidden)
        self.last = nn.Linear(hidden, classes)
        self.shortcut = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        return self.last(torch.relu(self.middle(h))) + self.shortcut(h)


class CrashingMLP(TinyMLP):
    """Kills its own process (as a crashed rank would die) at a given training forward call.

    Only on the first attempt, so that an elastic restart can complete the run.
    """

    def __init__(self, crash_rank: int, crash_at_call: int) -> None:
        super().__init__()
        self.crash_rank, self.crash_at_call, self.calls = crash_rank, crash_at_call, 0

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        if self.training:
            self.calls += 1
            first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
            if (first_attempt and self.calls == self.crash_at_call
                    and os.environ.get("RANK") == str(self.crash_rank)):
                os._exit(17)
        return super().forward(input)


def crashing_mlp(crash_rank: int = 1, crash_at_call: int = 1) -> CrashingMLP:
    return CrashingMLP(crash_rank, crash_at_call)


def recipe(tmp: Path, **changes: Any) -> dict[str, Any]:
    """A synthetic-data recipe for the tiny MLP, writing everything under `tmp`."""
    data: dict[str, Any] = {
        "model": {"builder": "tests.unit.train.tiny:tiny_mlp", "input_name": "x",
                  "output_name": "y", "input_shape": [FEATURES]},
        "data": {"dataset": "synthetic", "train_size": 128, "test_size": 64, "classes": CLASSES},
        "optimizer": {"name": "adamw", "lr": 0.02},
        "schedule": {"name": "constant"},
        "epochs": 2, "batch_size": 16, "parallelism": "none", "seed": 0, "device": "cpu",
        "log_dir": str(tmp / "run"), "checkpoint": {"dir": str(tmp / "run" / "ckpt")},
        "export": {"repo": str(tmp / "repo"), "name": "tiny"},
    }
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return data


def write_recipe(tmp: Path, **changes: Any) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp, **changes)))
    return path


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    # The variables torchrun would set.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    state = init_distributed("cpu", timeout_s=60)
    try:
        fn(state, *args)
    finally:
        shutdown()


def spawn(fn: Callable[..., None], world: int, *args: Any) -> None:
    """Run fn(state, *args) on `world` gloo ranks and wait for them all."""
    mp.start_processes(_entry, args=(world, unused_port(), fn, args), nprocs=world,
                       start_method="spawn")

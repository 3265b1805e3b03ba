"""A short training pass over a task's training split: how the optimizer recovers the accuracy
of a pruned copy (pruning removes channels the rest of the network relied on; one epoch
recovers most of it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from surge.tasks.data import Split

if TYPE_CHECKING:
    from surge.tasks.base import Task

LABEL_SMOOTHING = 0.05


def finetune(task: Task, train: Split, epochs: int, batch_size: int = 128, lr: float = 1e-3,
             seed: int = 0) -> Callable[[Any], None]:
    """A function that trains a module in place on `train` with the task's loss and flips."""
    def run(module: Any) -> None:
        import torch

        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        steps = max(1, epochs * (len(train) // batch_size))
        optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        loss_fn = task.loss(module, LABEL_SMOOTHING)
        flip = task.flip()
        module.train()
        for _ in range(epochs):
            order = rng.permutation(len(train))
            for start in range(0, len(order) - batch_size + 1, batch_size):
                index = torch.from_numpy(order[start:start + batch_size])
                inputs, targets = train.inputs[index], train.labels[index]
                if flip is not None:  # the augmentation the model was trained with
                    mask = torch.rand(len(index), generator=generator) < 0.5
                    inputs, targets = flip(inputs, targets, mask)
                loss = loss_fn(module(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        module.eval()
    return run

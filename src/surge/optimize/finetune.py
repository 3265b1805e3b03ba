"""The default fine-tune for pruned copies of the Fashion-MNIST model: a short pass over its
training set (pruning removes channels the rest of the network relied on; one epoch recovers
most of the accuracy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def fashion_finetune(epochs: int = 1, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0) -> Callable[[Any], None]:
    """A function that trains a module in place on Fashion-MNIST's training split."""
    def train(module: Any) -> None:
        import torch
        from torch import nn

        from surge.data.fashion_mnist import load_fashion_mnist, to_model_input

        images, labels = load_fashion_mnist("train")
        rng = np.random.default_rng(seed)
        steps = epochs * (len(images) // batch_size)
        optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
        module.train()
        for _ in range(epochs):
            order = rng.permutation(len(images))
            for start in range(0, len(order) - batch_size + 1, batch_size):
                idx = order[start:start + batch_size]
                x = torch.from_numpy(to_model_input(images[idx]))
                if rng.random() < 0.5:  # the same flip augmentation the model was trained with
                    x = torch.flip(x, dims=[3])
                loss = loss_fn(module(x), torch.from_numpy(labels[idx]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        module.eval()
    return train

"""The neural finance models: a small MLP for tabular risk and a price forecaster."""

from __future__ import annotations

import torch
from torch import nn


def positive_sizes(**sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"sizes must be whole numbers >= 1, got {bad}")


def tabular_mlp(features: int = 12, hidden: int = 64, depth: int = 2) -> nn.Module:
    """Feature rows [N, features] -> one logit [N, 1]. The first BatchNorm standardises the raw
    columns with statistics learnt in training, so clients send values as they are."""
    # A width of 0 trains to a constant score without a word; depth 0 is logistic regression.
    positive_sizes(features=features, hidden=hidden)
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a whole number >= 0, got {depth!r}")
    layers: list[nn.Module] = [nn.BatchNorm1d(features)]
    width = features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class PriceForecaster(nn.Module):
    """Past prices [N, window] in dollars -> next price [N, 1] in dollars. The network sees
    log prices relative to the last one and predicts the next log return, so one model serves
    a $20 stock and a $600 one alike."""

    def __init__(self, window: int = 12, hidden: int = 32) -> None:
        super().__init__()
        positive_sizes(window=window, hidden=hidden)
        head = nn.Linear(hidden, 1)
        nn.init.zeros_(head.weight)  # start at the naive forecast: next = last
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(nn.Linear(window, hidden), nn.Tanh(), head)

    def forward(self, prices: torch.Tensor) -> torch.Tensor:
        last = prices[:, -1:]
        relative = torch.log(prices.clamp_min(1e-6) / last.clamp_min(1e-6))
        return last * torch.exp(self.net(relative))


def price_forecaster(window: int = 12, hidden: int = 32) -> nn.Module:
    return PriceForecaster(window, hidden)

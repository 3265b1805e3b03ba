"""A DLRM-style click-through model: embedding tables for the sparse features, a bottom MLP
for the dense ones, pairwise dot-product interactions, a top MLP to one logit.

It takes the packed rows training feeds it, [N, 3 + dense] FP32 (user, item, category, dense
...); published, it takes the columns `user`, `item`, `category` (INT64 [N]) and `dense`
(FP32 [N, dense]) and answers the click probability."""

from __future__ import annotations

import torch
from torch import nn


class Dlrm(nn.Module):
    def __init__(self, users: int = 2000, items: int = 1000, categories: int = 20,
                 dense: int = 2, dim: int = 16, hidden: int = 64) -> None:
        super().__init__()
        sizes = {"users": users, "items": items, "categories": categories, "dense": dense,
                 "dim": dim, "hidden": hidden}
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}
        if bad:  # a 0 builds empty tables and layers that train to a constant score
            raise ValueError(f"sizes must be whole numbers >= 1, got {bad}")
        tables = [nn.Embedding(n, dim) for n in (users, items, categories)]
        for table in tables:
            nn.init.normal_(table.weight, std=0.05)
        self.tables = nn.ModuleList(tables)
        self.bottom = nn.Sequential(nn.Linear(dense, dim), nn.ReLU())
        vectors = len(self.tables) + 1
        pairs = vectors * (vectors - 1) // 2
        self.top = nn.Sequential(nn.Linear(dim + pairs, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        rows, cols = torch.triu_indices(vectors, vectors, offset=1)
        self.rows: torch.Tensor
        self.cols: torch.Tensor
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def id_rows(self) -> list[int]:
        """Rows of the table each id column (user, item, category) indexes: a served id must lie
        in [0, rows - 1] (the ONNX export's Gather would read row rows - 1 for an id of -1)."""
        return [table.num_embeddings for table in self.tables]

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        ids = packed[:, :len(self.tables)].long()
        dense = self.bottom(packed[:, len(self.tables):])
        vectors = torch.stack([dense, *(t(ids[:, k]) for k, t in enumerate(self.tables))], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))[:, self.rows, self.cols]
        return self.top(torch.cat([dense, dots], dim=1))


def dlrm(users: int = 2000, items: int = 1000, categories: int = 20, dense: int = 2,
         dim: int = 16, hidden: int = 64) -> nn.Module:
    return Dlrm(users, items, categories, dense, dim, hidden)

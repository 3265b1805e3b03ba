"""The simulated interactions as a dataset of the library (`simulated-clicks`): training on
random impressions, evaluation on candidate lists of held-out draws."""

from __future__ import annotations

import numpy as np
import torch

from surge.tasks import DataOptions, Dataset, EvalDataset, Split
from surge.tasks.tabular import Column, ColumnDataset, pack
from surge_examples.recommendation.simulator import candidate_lists, impressions, make_world

TRAIN_IMPRESSIONS = 200_000
VALIDATION_IMPRESSIONS = 20_000
EVAL_USERS = 200
CANDIDATES = 100
COLUMNS = (Column("user", "INT64"), Column("item", "INT64"), Column("category", "INT64"),
           Column("dense", "FP32", 2))


class SimulatedClicks(ColumnDataset, Dataset):
    """Clicks of simulated users (seeded by `options.seed`): `train_size` impressions to train
    on, and `test_size` users x 100 candidates to rank."""

    name = "simulated-clicks"
    columns = COLUMNS

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        world = make_world(seed=options.seed)
        splits = []
        for count, seed in ((options.train_size or TRAIN_IMPRESSIONS, 1),
                            (options.test_size or VALIDATION_IMPRESSIONS, 2)):
            columns, clicks = impressions(world, count, options.seed * 100 + seed)
            splits.append(Split(torch.from_numpy(pack(self.columns, columns)),
                                torch.from_numpy(clicks)))
        return splits[0], splits[1]

    def lists(self, options: DataOptions) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """(columns, labels [N, 2] of (user, click), true click probabilities)."""
        world = make_world(seed=options.seed)
        return candidate_lists(world, options.test_size or EVAL_USERS, CANDIDATES,
                               options.seed * 100 + 3)

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        columns, labels, _ = self.lists(options)
        return EvalDataset(self.name, columns, labels)

"""The simulated interactions as a dataset of the library (`simulated-clicks`): training on
random impressions, evaluation on candidate lists of held-out draws."""

from __future__ import annotations

import numpy as np
import torch

from surge.errors import ConfigError
from surge.tasks import DataOptions, Dataset, EvalDataset, Split
from surge.tasks.data import check_generated_size
from surge.tasks.tabular import Column, ColumnDataset, pack
from surge_examples.recommendation.simulator import candidate_lists, impressions, make_world

TRAIN_IMPRESSIONS = 200_000
VALIDATION_IMPRESSIONS = 20_000
EVAL_USERS = 200
CANDIDATES = 100
# Peak bytes one drawn impression takes while a split is made (ids, taste products, click
# probabilities, packed row), measured: a size past memory is refused before the first draw.
IMPRESSION_BYTES = 160
COLUMNS = (Column("user", "INT64"), Column("item", "INT64"), Column("category", "INT64"),
           Column("dense", "FP32", 2))


class SimulatedClicks(ColumnDataset, Dataset):
    """Clicks of simulated users (seeded by `options.seed`): `train_size` impressions to train
    on, and `test_size` users x 100 candidates to rank."""

    name = "simulated-clicks"
    columns = COLUMNS

    def check(self, options: DataOptions) -> None:
        """Split sizes that could not be drawn in memory are refused, naming the option."""
        for key, size in (("data.train_size", options.train_size or TRAIN_IMPRESSIONS),
                          ("data.test_size", options.test_size or VALIDATION_IMPRESSIONS)):
            check_generated_size(key, size, IMPRESSION_BYTES, "simulated impressions")

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        self.check(options)
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
        users = options.test_size or EVAL_USERS
        if users > world.users:  # each list is a distinct user's
            raise ConfigError(f"data.test_size {users:,}: the candidate lists are one per "
                              f"simulated user, and there are {world.users:,}; give at most "
                              f"{world.users:,}")
        return candidate_lists(world, users, CANDIDATES,
                               options.seed * 100 + 3)

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        columns, labels, _ = self.lists(options)
        return EvalDataset(self.name, columns, labels)

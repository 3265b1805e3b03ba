"""Simulated users, items and clicks with known ground-truth preferences.

No package this project can install ships real interaction logs, so the recommendation example
runs on a simulator whose truth is known: each user and item has a latent taste vector, each
item a popularity, a category and a price; a user clicks an item shown to them with probability

    p(u, i) = sigmoid(SHARPNESS * <taste_u, taste_i> + popularity_i - PRICE_WEIGHT * price_i + BIAS)

and the clicks are drawn from that. Everything follows from the seed. Because p is known, the
ranking metrics of a trained model can be set against the oracle that ranks by p itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARPNESS = 3.0
PRICE_WEIGHT = 0.5
BIAS = -2.0


@dataclass(frozen=True)
class World:
    """Users, items and what they truly prefer."""

    user_taste: np.ndarray  # [users, dims]
    user_activity: np.ndarray  # [users]: log sessions per week, a dense feature (no effect)
    item_taste: np.ndarray  # [items, dims]
    popularity: np.ndarray  # [items]
    category: np.ndarray  # [items] int64
    price: np.ndarray  # [items] standardised

    @property
    def users(self) -> int:
        return len(self.user_taste)

    @property
    def items(self) -> int:
        return len(self.item_taste)

    def click_probability(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        affinity = (self.user_taste[users] * self.item_taste[items]).sum(axis=1)
        logit = (SHARPNESS * affinity + self.popularity[items] - PRICE_WEIGHT * self.price[items]
                 + BIAS)
        return 1.0 / (1.0 + np.exp(-logit))

    def rows(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """The feature columns a model sees for (user, item) pairs."""
        dense = np.stack([self.user_activity[users], self.price[items]], axis=1)
        return {"user": users.astype(np.int64), "item": items.astype(np.int64),
                "category": self.category[items], "dense": dense.astype(np.float32)}


def make_world(users: int = 2000, items: int = 1000, dims: int = 8, categories: int = 20,
               seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    user_taste = rng.normal(0, 1 / np.sqrt(dims), (users, dims))
    item_taste = rng.normal(0, 1, (items, dims))
    # Categories group items of similar taste, so the category embedding carries signal.
    centres = rng.normal(0, 1, (categories, dims))
    category = np.argmax(item_taste @ centres.T, axis=1).astype(np.int64)
    return World(user_taste, rng.normal(1.0, 0.5, users), item_taste,
                 rng.normal(0, 0.5, items), category, rng.normal(0, 1, items))


def impressions(world: World, count: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`count` random (user, item) impressions and their drawn clicks (0/1)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, world.users, count)
    items = rng.integers(0, world.items, count)
    clicks = rng.random(count) < world.click_probability(users, items)
    return world.rows(users, items), clicks.astype(np.int64)


def candidate_lists(world: World, users: int, candidates: int,
                    seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """`users` users, each against `candidates` distinct items: (columns, labels [N, 2] of
    (user, click), true click probabilities [N])."""
    rng = np.random.default_rng(seed)
    who = rng.choice(world.users, users, replace=False)
    user_ids = np.repeat(who, candidates)
    item_ids = np.concatenate([rng.choice(world.items, candidates, replace=False) for _ in who])
    truth = world.click_probability(user_ids, item_ids)
    clicks = (rng.random(len(truth)) < truth).astype(np.int64)
    return world.rows(user_ids, item_ids), np.stack([user_ids, clicks], axis=1), truth

"""Distributed state comes from torchrun's environment; data shards cover each batch once."""

from __future__ import annotations

import pytest
import torch

from surge.tasks.classification import flip_images
from surge.train.data import Split, eval_shard, train_batches
from surge.train.distributed import DistState, set_threads, state_from_env


def test_state_from_torchrun_environment() -> None:
    state = state_from_env("cpu", {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                   "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert (state.rank, state.world_size, state.local_rank, state.local_world_size) == (3, 4, 1, 2)
    assert state.restart_count == 1
    assert state.distributed
    assert not state.is_main
    assert state.backend == "gloo"


def test_no_environment_means_one_process() -> None:
    state = state_from_env("cpu", {})
    assert (state.rank, state.world_size, state.distributed, state.is_main) == (0, 1, False, True)


@pytest.mark.parametrize(("threads", "omp", "expected"), [
    (0, "1", 1),  # torchrun's setting for several processes, or the user's
    (0, None, 2),  # cores / local processes: 4 / 2
    (0, "0", 2), (0, "2,1", 2), (0, "x", 2),  # not one positive count: cores / processes
    (3, "1", 3),  # an explicit count wins
])
def test_threads_follow_the_recipe_then_omp_num_threads_then_the_cores(
        threads: int, omp: str | None, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr("surge.train.distributed.available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        assert set_threads(threads, DistState(local_world_size=2)) == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def _split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


def test_rank_batches_together_are_the_single_process_global_batch() -> None:
    split = _split(64)
    whole = [labels for _, labels in train_batches(split, 16, 3, 0, 1, 0, flip=None)]
    halves = [list(train_batches(split, 16, 3, 0, 2, rank, flip=None)) for rank in (0, 1)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 4
    for step, labels in enumerate(whole):
        shards = torch.cat([halves[0][step][1], halves[1][step][1]])
        assert sorted(shards.tolist()) == sorted(labels.tolist())


def test_the_order_changes_with_the_epoch_and_repeats_with_it() -> None:
    split = _split(64)

    def order(epoch: int) -> list[int]:
        return torch.cat([y for _, y in train_batches(split, 16, epoch, 0, 1, 0, None)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)


def test_eval_shards_cover_the_test_set_exactly_once() -> None:
    split = _split(10)
    labels = torch.cat([eval_shard(split, 3, rank).labels for rank in range(3)])
    assert sorted(labels.tolist()) == list(range(10))


def test_flip_mirrors_about_half_the_images_left_to_right() -> None:
    image = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28)
    split = Split(image.repeat(64, 1, 1, 1), torch.zeros(64, dtype=torch.int64))
    for flip, low, high in ((flip_images, 16, 48), (None, 0, 0)):
        inputs, _ = next(train_batches(split, 64, 0, 0, 1, 0, flip=flip))
        mirrored = sum(bool(torch.equal(x, image[0].flip(2))) for x in inputs)
        unchanged = sum(bool(torch.equal(x, image[0])) for x in inputs)
        assert mirrored + unchanged == 64
        assert low <= mirrored <= high

"""Which worker of a pool takes the next batch."""

from __future__ import annotations

from collections import deque
from typing import Any

from surge.scheduler.types import Batch
from surge.workers.placement import Placement
from surge.workers.pool import State, Worker, dispatch_order


def worker(index: int, dispatched: list[float], last_done: float = 0.0) -> Worker:
    batches = deque(Batch(i, (), (0, 4), at) for i, at in enumerate(dispatched))
    none: Any = None  # no process or pipe: only the bookkeeping is ranked
    return Worker(index, Placement("cpu", 1), none, none, 0.0, State.READY, batches=batches,
                  last_done=last_done)


def pick(*workers: Worker) -> int:
    return max(workers, key=dispatch_order).index


def test_a_worker_with_nothing_to_do_comes_first() -> None:
    assert pick(worker(0, [1.0]), worker(1, [])) == 1


def test_among_busy_workers_the_one_computing_longest_takes_the_next_batch() -> None:
    assert pick(worker(0, [2.0]), worker(1, [1.0])) == 1
    assert pick(worker(0, [1.0]), worker(1, [2.0])) == 0


def test_a_batch_that_waited_behind_another_started_when_that_one_was_done() -> None:
    # Worker 0's batch was handed out at 1.0 but started at 3.0, when its previous one ended.
    assert pick(worker(0, [1.0], last_done=3.0), worker(1, [2.0])) == 1

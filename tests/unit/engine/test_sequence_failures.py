"""A sequence model's requests that fail before they reach its queue (past their timeout while
their sequence's earlier requests run, a start beyond max_sequences, a client gone while
waiting) count in its statistics' `fail` by reason, as Triton counts them; each failure once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from surge.engine import Engine, PoolEvents, PoolSpec
from surge.engine.sequences import SequenceFlags, request_sequence
from surge.engine.stats import FAIL_REASONS, ModelStats
from surge.errors import DeadlineExceededError, QueueFullError
from surge.repository import Repository
from tests.unit.engine.fakes import WIDTH, FakeClock, make_repo, settle
from tests.unit.engine.test_sequence_drops import SequencePool
from tests.unit.engine.test_sequences import in_loop

CONFIG = ("max_batch_size: 8\nbatching: {max_queue_delay_ms: 0}\nsequence_batching: "
          "{max_sequence_idle_ms: 600000, max_sequences: 1, state: [{input: state_in, output: "
          "state_out}]}\n")


class Sequences:
    def __init__(self, engine: Engine, pools: list[SequencePool]) -> None:
        self.engine, self.pools = engine, pools

    async def send(self, sequence_id: int, start: bool = False,
                   timeout_us: int | None = None) -> asyncio.Task[dict[str, np.ndarray]]:
        """One request of the sequence, sent now (queued, waiting or failed on return)."""
        token = request_sequence.set(SequenceFlags(sequence_id, start=start))
        try:
            task = asyncio.create_task(self.engine.infer(
                "m", None, {"x": np.ones((1, WIDTH), np.float32)}, timeout_us=timeout_us))
        finally:
            request_sequence.reset(token)
        await settle()
        return task

    def stats(self) -> ModelStats:
        stats = self.engine.stats("m")
        assert sum(stats.failures(why) for why in FAIL_REASONS) == stats.fail[0]
        return stats


@asynccontextmanager
async def sequence_model(root: Path) -> AsyncIterator[Sequences]:
    make_repo(root, CONFIG)
    pools: list[SequencePool] = []

    def factory(spec: PoolSpec, events: PoolEvents) -> SequencePool:
        pools.append(SequencePool(spec, events))
        return pools[-1]

    engine = Engine(Repository(root), pool_factory=factory, clock=FakeClock())
    await engine.start()
    try:
        yield Sequences(engine, pools)
    finally:
        await engine.stop(grace_s=0.0)


def _reasons(stats: ModelStats) -> dict[str, int]:
    return {why: stats.failures(why) for why in FAIL_REASONS if stats.failures(why)}


@in_loop
async def test_a_start_beyond_max_sequences_is_a_rejected_failure(tmp_path: Path) -> None:
    async with sequence_model(tmp_path) as m:
        first = await m.send(1, start=True)  # queued: sequence 1 holds the one slot
        refused = await m.send(2, start=True)
        with pytest.raises(QueueFullError, match="max_sequences"):
            await refused
        assert m.stats().fail[0] == 1
        assert _reasons(m.stats()) == {"REJECTED": 1}
        m.pools[-1].answer()
        await first
        assert m.stats().success[0] == 1
        assert m.stats().fail[0] == 1, "the answered one is no failure"


@in_loop
async def test_a_request_past_its_timeout_behind_its_sequence_is_a_rejected_failure(
        tmp_path: Path) -> None:
    async with sequence_model(tmp_path) as m:
        first = await m.send(1, start=True)
        late = await m.send(1, timeout_us=1000)
        with pytest.raises(DeadlineExceededError, match="waited for the earlier requests"):
            await late
        assert _reasons(m.stats()) == {"REJECTED": 1}
        m.pools[-1].fail()  # the first fails in its instance: counted by the queue, once
        with pytest.raises(Exception, match="runner raised"):
            await first
        assert m.stats().fail[0] == 2
        assert _reasons(m.stats()) == {"REJECTED": 1, "BACKEND": 1}


@in_loop
async def test_a_client_gone_while_waiting_for_its_sequence_is_a_canceled_failure(
        tmp_path: Path) -> None:
    async with sequence_model(tmp_path) as m:
        first = await m.send(1, start=True)
        waiting = await m.send(1, timeout_us=60_000_000)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert _reasons(m.stats()) == {"CANCELED": 1}
        m.pools[-1].answer()
        await first
        assert m.stats().fail[0] == 1

"""A model with `slo_p99_ms` on real workers: its batch times are probed on load, so the first
burst of deadline-carrying requests is admitted only as far as the deadline allows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from tests.integration.engine.onnx_models import make_repo

from surge.engine import Engine
from surge.errors import DeadlineExceededError, QueueFullError
from surge.repository import Repository

SLOW_SLO = ("slow", "max_batch_size: 8\ninstances: 1\nthreads: 1\nqueue: {max_size: 64}\n"
                    "slo_p99_ms: 50\n")


def test_first_burst_after_a_load_is_refused_where_the_deadline_cannot_be_met(
        tmp_path: Path) -> None:
    async def body() -> None:
        make_repo(tmp_path, {"slow": SLOW_SLO})
        engine = Engine(Repository(tmp_path))
        await engine.start()
        try:
            model = engine._find("slow", None)
            full = model.scheduler.batch_time(8)
            assert full is not None  # known before any request
            assert model.scheduler.batch_time(1) is not None
            assert engine.stats("slow").inference_count == 0  # the probe is no traffic
            # Full batches (8 rows a request) with time for about a third of them: long
            # enough (>= 100 ms) that a busy machine's hiccups do not decide the outcome.
            timeout_s = max(0.1, 4 * full)
            count = 3 * int(timeout_s / full) + 10
            x = np.full((8, 512), 0.5, np.float32)
            outcomes = await asyncio.gather(
                *(engine.infer("slow", None, {"x": x}, timeout_us=int(timeout_s * 1e6))
                  for _ in range(count)), return_exceptions=True)
            refused = [o for o in outcomes if isinstance(o, QueueFullError)]
            answered = [o for o in outcomes if isinstance(o, dict)]
            late = [o for o in outcomes if isinstance(o, DeadlineExceededError)]
            assert len(refused) + len(answered) + len(late) == count, outcomes
            assert len(refused) >= count // 2, (len(refused), len(late), full)
            assert answered, (len(refused), len(late), full)
            assert all(r.retry_after_s and r.retry_after_s > 0 for r in refused)
            latency = engine.stats("slow").latency
            assert latency["b_ms"] >= 0  # the fitted line is reported
            assert "8" in latency["sizes"]  # type: ignore[operator]
        finally:
            await engine.stop(grace_s=5.0)

    asyncio.run(body())

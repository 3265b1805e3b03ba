"""A pipeline under a memory budget its step models cannot fit together: its load is refused
with the steps' sizes and the budget, instead of each step evicting another in turn."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from surge.engine import Engine, PoolEvents, PoolSpec
from surge.engine.ondemand import ResidencyOptions
from surge.engine.residency import MemoryBudget, NoRoomError
from surge.errors import ModelNotReadyError, http_status
from surge.protocol.errors import load_failure
from surge.repository import Repository
from tests.unit.engine.fakes import WIDTH, make_repo
from tests.unit.pipeline.test_served import AutoPool

MB = 10**6
PIPELINE = f"""\
kind: pipeline
max_batch_size: 8
inputs: [{{name: values, datatype: FP32, shape: [-1, {WIDTH}]}}]
outputs: [{{name: out, datatype: FP32, shape: [-1, {WIDTH}]}}]
steps:
  - {{name: first, model: a, inputs: {{x: values}}, outputs: {{y: mid}}}}
  - {{name: second, model: b, inputs: {{x: mid}}, outputs: {{y: out}}}}
"""
TOO_BIG = (r"pipeline 'p' needs about 200.0 MB for its step models together, more than the "
           r"whole memory budget of the machine \(150.0 MB\): a \(100.0 MB\), b \(100.0 MB\)")


class Pools:
    """Auto-answering pools of 100 MB each, counting the loads of each model."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> AutoPool:
        starts = self.starts

        class Sized(AutoPool):
            def resident_bytes(self) -> int:
                return 100 * MB

            async def start(self) -> None:
                starts[spec.ref] = starts.get(spec.ref, 0) + 1
                await super().start()

        return Sized(spec, events)


def engine(root: Path, budget_mb: int, pools: Pools) -> Engine:
    for name in ("a", "b", "c"):
        make_repo(root, "max_batch_size: 8\n", name)
    (root / "p").mkdir()
    (root / "p" / "config.yaml").write_text(PIPELINE)
    return Engine(Repository(root), pool_factory=pools, residency=ResidencyOptions(
        "on-demand", MemoryBudget(budget_mb * MB)))


def values() -> dict[str, np.ndarray]:
    return {"values": np.ones((1, WIDTH), np.float32)}


def x() -> dict[str, np.ndarray]:
    return {"x": np.ones((1, WIDTH), np.float32)}


def test_a_pipeline_whose_measured_steps_exceed_the_budget_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        pools = Pools()
        served = engine(tmp_path, 150, pools)
        await served.start()
        try:
            await served.infer("a", None, x())
            await served.infer("b", None, x())  # a evicted: both measured at 100 MB
            for _ in range(3):  # before: each try evicted one step to load the other
                with pytest.raises(ModelNotReadyError, match=TOO_BIG) as refused:
                    await served.infer("p", None, values())
                assert http_status(refused.value) == 503
                served.on_demand.files_changed("p")  # past the backoff: tried again
            assert pools.starts == {"a": 1, "b": 1}  # refused before any step loaded
            with pytest.raises(NoRoomError, match=TOO_BIG) as explicit:
                await served.load("p")
            assert http_status(load_failure(explicit.value)) == 400
            assert served.model_ready("b")  # what was served stays
        finally:
            await served.stop(grace_s=0.0)

    asyncio.run(body())


def test_a_pipeline_whose_steps_were_never_measured_is_refused_once_they_are(
        tmp_path: Path) -> None:
    async def body() -> None:
        pools = Pools()
        served = engine(tmp_path, 150, pools)
        await served.start()
        try:
            # Unmeasured, the steps load (their sizes were a guess), and measured together
            # they exceed the budget: refused with the figures, not a step evicted by the other.
            with pytest.raises(ModelNotReadyError, match=TOO_BIG):
                await served.infer("p", None, values())
            assert pools.starts == {"a": 1, "b": 1}
            served.on_demand.files_changed("p")
            with pytest.raises(ModelNotReadyError, match=TOO_BIG):
                await served.infer("p", None, values())
            assert pools.starts == {"a": 1, "b": 1}
            # Others still load: the steps' memory is not held for the refused pipeline.
            assert (await served.infer("c", None, x()))["y"].shape == (1, WIDTH)
        finally:
            await served.stop(grace_s=0.0)

    asyncio.run(body())


def test_a_pipeline_whose_steps_fit_together_loads(tmp_path: Path) -> None:
    async def body() -> None:
        pools = Pools()
        served = engine(tmp_path, 250, pools)
        await served.start()
        try:
            await served.infer("a", None, x())
            await served.infer("b", None, x())
            await served.infer("c", None, x())  # a evicted
            answer = await served.infer("p", None, values())
            assert float(answer["out"][0, 0]) == 7.0  # 2 (2x + 1) + 1
            assert pools.starts == {"a": 2, "b": 1, "c": 1}
        finally:
            await served.stop(grace_s=0.0)

    asyncio.run(body())

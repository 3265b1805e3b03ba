"""`placement: in-process`: instances on threads of the serving process, on tiny ONNX models."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from tests.integration.engine.onnx_models import make_repo
from tests.integration.engine.test_engine import (
    rows,
    run,
    served,
    serving,
    until_two_instances_have_lines,
)

from surge.engine import Engine
from surge.errors import ModelLoadError, ServingError
from surge.repository import ModelConfig, Repository
from surge.runtimes import RunnerOptions
from surge.workers.threads import InProcessPool

IN_PROCESS = "max_batch_size: 8\ninstances: 2\nthreads: 1\nplacement: in-process\n"
SLOW = "max_batch_size: 8\ninstances: 1\nthreads: 1\nplacement: in-process\n"


def pool_of(engine: Engine, name: str) -> InProcessPool:
    pool = served(engine, name).pool
    assert isinstance(pool, InProcessPool)
    return pool


def test_answers_equal_the_runner_and_no_worker_process_starts(tmp_path: Path) -> None:
    before = {p.pid for p in multiprocessing.active_children()}

    async def body() -> None:
        async with serving(tmp_path, {"tiny": ("affine", IN_PROCESS)}) as engine:
            started = {p.pid for p in multiprocessing.active_children()} - before
            assert not started  # no worker processes
            pool = pool_of(engine, "tiny")
            assert pool.instances == 2
            assert pool.ready
            assert engine.model("tiny").devices == ("cpu", "cpu")
            x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
            got = await engine.infer("tiny", None, {"x": x})
            want = Repository(tmp_path).load("tiny", options=RunnerOptions(1)).runner.run({"x": x})
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
            # concurrent requests are batched together and each gets its own rows back
            sizes = [1 + i % 3 for i in range(40)]
            results = await asyncio.gather(
                *(engine.infer("tiny", None, rows(float(i), n)) for i, n in enumerate(sizes)))
            for i, (n, out) in enumerate(zip(sizes, results, strict=True)):
                np.testing.assert_array_equal(out["y"], np.full((n, 4), 2.0 * i + 1))
            stats = engine.stats("tiny")
            assert stats.inference_count == 3 + sum(sizes)
            assert stats.execution_count < 1 + len(sizes)
            assert stats.compute_infer[1] > 0
            assert stats.compute_cpu[1] > 0

    run(body())


def test_each_instance_reports_its_own_batches(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"tiny": ("affine", IN_PROCESS)}) as engine:
            model = await until_two_instances_have_lines(engine, "tiny")
            assert sorted(model.scheduler.instance_lines()) == [0, 1]

    run(body())


def test_a_failing_batch_fails_its_requests_and_the_instance_serves_on(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"tiny": ("affine", SLOW)}) as engine:
            instance = pool_of(engine, "tiny")._instances[0]
            healthy = instance.runner.run

            def run_or_fail(inputs: dict[str, Any]) -> Any:
                if float(inputs["x"][0, 0]) < 0:
                    raise RuntimeError("engine refused the batch")
                return healthy(inputs)

            instance.runner.run = run_or_fail  # type: ignore[method-assign]
            with pytest.raises(ServingError, match="engine refused the batch"):
                await engine.infer("tiny", None, rows(-1.0))
            out = await engine.infer("tiny", None, rows(3.0))
            np.testing.assert_array_equal(out["y"], np.full((1, 4), 7.0))
            assert engine.ready()

    run(body())


def test_stop_under_load_answers_every_accepted_request(tmp_path: Path) -> None:
    async def body() -> None:
        make_repo(tmp_path, {"slow": ("slow", SLOW)})
        engine = Engine(Repository(tmp_path))
        await engine.start()
        tasks = [asyncio.create_task(engine.infer("slow", None, rows(0.5, 2, 512)))
                 for _ in range(20)]
        await asyncio.sleep(0.01)
        await engine.stop(grace_s=30.0)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, dict) for r in results), results
        assert not engine.ready()

    run(body())


def test_a_broken_model_fails_to_load_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    (tmp_path / "broken" / "config.yaml").write_text("placement: in-process\n")

    async def body() -> None:
        engine = Engine(Repository(tmp_path), models=["broken"])
        with pytest.raises(ModelLoadError, match="broken"):
            await engine.start()
        assert engine.index()[0]["state"] == "UNAVAILABLE"

    run(body())


def test_a_shared_worker_group_is_not_in_process() -> None:
    with pytest.raises(ValidationError, match="shared group runs local processes"):
        ModelConfig(name="m", placement="in-process", worker="shared")
    with pytest.raises(ValidationError, match="placement"):
        ModelConfig(name="m", placement="threads")

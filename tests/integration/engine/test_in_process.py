"""`placement: in-process`: instances on threads of the serving process, on tiny ONNX models."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
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
from surge.errors import ModelLoadError, ServingError, WorkerCrashedError
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


# A hang limit of 300 ms (the counting loop takes a few microseconds a batch).
LOOP = ("loop", "max_batch_size: 1\ninstances: 1\nthreads: 1\nplacement: in-process\n"
                "hang_multiple: 5\nhang_min_ms: 300\n")


def count(n: int) -> dict[str, np.ndarray]:
    return {"n": np.array([n], np.int64)}


async def counted(engine: Engine, n: int) -> int:
    out = await asyncio.wait_for(engine.infer("loop", None, count(n)), 10.0)
    return int(out["y"][0])


def test_a_hung_batch_is_stopped_as_hung_and_the_instance_serves_on(tmp_path: Path) -> None:
    """A thread cannot be killed: the hung batch kept its instance busy for ever."""
    async def body() -> None:
        async with serving(tmp_path, {"loop": LOOP}) as engine:
            for _ in range(20):  # measured batches: the hang limit's estimate
                assert await counted(engine, 3) == 6
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(WorkerCrashedError, match="hung and was stopped") as error:
                await counted(engine, 10**15)
            # Answered as a worker's hung batch is: retried once, then 503.
            assert "it hung on the retry too" in str(error.value)
            assert error.value.status == 503
            assert loop.time() - start < 5.0
            assert pool_of(engine, "loop").hangs == 2
            assert engine.metrics.worker_hangs.labels("loop")._value.get() == 2
            assert engine.model_ready("loop")
            for n in range(1, 20):  # the same instance, its thread free again
                assert await counted(engine, n) == 2 * n

    run(body())


def test_a_hung_request_without_time_to_retry_fails_at_the_hang_limit(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"loop": LOOP}) as engine:
            for _ in range(20):
                assert await counted(engine, 3) == 6
            with pytest.raises(WorkerCrashedError, match="hung .* no time left"):
                await asyncio.wait_for(
                    engine.infer("loop", None, count(10**15), timeout_us=200_000), 5.0)
            assert await counted(engine, 4) == 8

    run(body())


def test_stop_interrupts_a_batch_still_computing_after_the_grace(tmp_path: Path) -> None:
    """Before any measured batch there is no hang limit: stop() frees the thread itself."""
    async def body() -> None:
        make_repo(tmp_path, {"loop": LOOP})
        engine = Engine(Repository(tmp_path))
        await engine.start()
        task = asyncio.create_task(engine.infer("loop", None, count(10**15)))
        await asyncio.sleep(0.2)
        await engine.stop(grace_s=0.2)
        with pytest.raises(ServingError, match="stopped"):
            await task
        threads = [t for t in threading.enumerate() if t.name.startswith("surge-loop-")]
        assert threads
        for thread in threads:
            thread.join(5.0)
            assert not thread.is_alive()

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

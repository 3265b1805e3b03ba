"""The Engine with real worker processes on tiny ONNX models in a temporary repository."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from prometheus_client import generate_latest
from tests.conftest import EXAMPLE_REPOSITORY
from tests.integration.engine.onnx_models import make_repo

from surge.engine import Engine, ServedModel
from surge.errors import (
    DeadlineExceededError,
    InputError,
    ModelLoadError,
    ModelNotReadyError,
    NotFoundError,
    QueueFullError,
    WorkerCrashedError,
)
from surge.repository import Repository
from surge.runtimes import RunnerOptions
from surge.workers.pool import PIPELINE_DEPTH
from surge.workers.transport import TRANSPORT_ENV, PipeTransport, ShmTransport, segment_prefix

T = TypeVar("T")
AFFINE = ("affine", "max_batch_size: 8\nbatching: {max_queue_delay_ms: 5}\n")
# One instance, single thread: a full batch of 8 takes tens of milliseconds.
SLOW = ("slow", "max_batch_size: 8\ninstances: 1\nthreads: 1\nqueue: {max_size: 64}\n")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def shm_segments() -> set[str]:
    """This process's segments (other processes on the machine may create their own)."""
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(segment_prefix())}


@asynccontextmanager
async def serving(root: Path, models: dict[str, tuple[str, str]] | None = None,
                  **kwargs: Any) -> AsyncIterator[Engine]:
    make_repo(root, models or {"tiny": AFFINE})
    engine = Engine(Repository(root), **kwargs)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace_s=5.0)


def served(engine: Engine, name: str) -> ServedModel:
    return engine._find(name, None)


def rows(value: float, n: int = 1, width: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, np.float32)}


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def until_two_instances_have_lines(engine: Engine, name: str) -> ServedModel:
    """Batches of several sizes until both instances of `name` have a batch-time line."""
    model = served(engine, name)
    for _ in range(200):
        await asyncio.gather(*(engine.infer(name, None, rows(1.0, 1 + i % 4)) for i in range(8)))
        if len(model.scheduler.instance_lines()) == 2:
            break
    return model


# -- results -------------------------------------------------------------------------------
def test_results_equal_the_in_process_runner(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as engine:
            x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
            got = await engine.infer("tiny", None, {"x": x})
            want = Repository(tmp_path).load("tiny", options=RunnerOptions(1)).runner.run({"x": x})
            assert set(got) == {"y", "z"}
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
            only = await engine.infer("tiny", 1, {"x": x}, outputs=["z"])
            assert set(only) == {"z"}

    run(body())


@pytest.mark.skipif(not (EXAMPLE_REPOSITORY / "fashion" / "1" / "model.onnx").is_file(),
                    reason="the example fashion model is produced by surge train recipes/fashion.yaml")
def test_example_fashion_model_matches_the_in_process_runner() -> None:
    async def body() -> None:
        engine = Engine(Repository(EXAMPLE_REPOSITORY), models=["fashion"])
        await engine.start()
        try:
            images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
            parts = await asyncio.gather(
                *(engine.infer("fashion", None, {"image": images[i:i + 1]}) for i in range(5))
            )
            got = np.concatenate([p["logits"] for p in parts])
            runner = Repository(EXAMPLE_REPOSITORY).load(
                "fashion", options=RunnerOptions(intra_op_threads=1)).runner
            np.testing.assert_allclose(got, runner.run({"image": images})["logits"],
                                       rtol=1e-4, atol=1e-5)
        finally:
            await engine.stop()

    run(body())


def test_engine_metrics(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as engine:
            await asyncio.gather(*(engine.infer("tiny", None, rows(1.0)) for _ in range(10)))
            engine.metrics.observe_request("tiny", "success", 0.003)
            text = generate_latest(engine.metrics.registry).decode()
            assert 'surge_queue_duration_seconds_count{model="tiny"} 10.0' in text
            assert 'surge_batch_size_sum{model="tiny"} 10.0' in text
            assert 'surge_requests_total{model="tiny",outcome="success",protocol="http"} 1.0' in text
            assert 'surge_queue_depth{model="tiny"} 0.0' in text
            for name in ("surge_compute_duration_seconds", "surge_request_duration_seconds",
                         "surge_rejected_total", "surge_expired_total",
                         "surge_worker_restarts_total"):
                assert f"# TYPE {name.removesuffix('_total')}" in text

    run(body())


def test_handle_index_and_stats(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as engine:
            handle = engine.model("tiny")
            assert (handle.name, handle.version, handle.versions) == ("tiny", 1, (1,))
            assert handle.signature.max_batch_size == 8
            assert handle.platform == "onnxruntime_onnx"
            # Each instance reports where its engine runs (ONNX Runtime here: CPU provider).
            assert handle.devices
            assert set(handle.devices) <= {"cpu", "cuda"}
            assert engine.index() == [
                {"name": "tiny", "version": "1", "state": "READY", "reason": ""}
            ]
            await engine.infer("tiny", None, rows(1.0, 2))
            stats = engine.stats("tiny")
            assert (stats.inference_count, stats.execution_count) == (2, 1)
            assert stats.success[0] == 1
            assert stats.batch_stats[2][0] == 1
            assert stats.compute_infer[1] > 0
            assert stats.last_inference > 0

    run(body())


def test_concurrent_requests_are_batched_and_split_back(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as engine:
            sizes = [1 + i % 3 for i in range(60)]
            results = await asyncio.gather(
                *(engine.infer("tiny", None, rows(float(i), n)) for i, n in enumerate(sizes))
            )
            for i, (n, out) in enumerate(zip(sizes, results, strict=True)):
                np.testing.assert_array_equal(out["y"], np.full((n, 4), 2.0 * i + 1))
            stats = engine.stats("tiny")
            assert stats.inference_count == sum(sizes)
            assert stats.execution_count < len(sizes)

    run(body())


def test_bad_inputs_and_unknown_models(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as engine:
            with pytest.raises(InputError, match=r"input 'x' expects FP32 \[-1, 4\], got FP32 \[1, 5\]"):
                await engine.infer("tiny", None, rows(1.0, 1, width=5))
            with pytest.raises(InputError, match="INT64"):
                await engine.infer("tiny", None, {"x": np.ones((1, 4), np.int64)})
            with pytest.raises(InputError, match="unknown output 'nope'"):
                await engine.infer("tiny", None, rows(1.0), outputs=["nope"])
            with pytest.raises(InputError, match="exceeds the model's max 8"):
                await engine.infer("tiny", None, rows(1.0, 9))
            with pytest.raises(NotFoundError):
                await engine.infer("missing", None, rows(1.0))
            with pytest.raises(NotFoundError, match="version 2"):
                engine.model("tiny", 2)

    run(body())


# -- readiness, load, unload -----------------------------------------------------------------
def test_ready_only_after_every_instance_is_warm(tmp_path: Path) -> None:
    make_repo(tmp_path, {"tiny": ("affine", "max_batch_size: 8\ninstances: 2\n")})

    async def body() -> None:
        engine = Engine(Repository(tmp_path))
        starting = asyncio.create_task(engine.start())
        await asyncio.sleep(0.05)
        assert not engine.ready()
        assert not engine.model_ready("tiny")
        assert engine.index()[0]["state"] == "LOADING"
        await starting
        try:
            assert engine.ready()
            assert engine.model_ready("tiny")
            assert len(served(engine, "tiny").pool.pids()) == 2
        finally:
            await engine.stop()

    run(body())


def test_broken_model_fails_to_load_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")

    async def body() -> None:
        engine = Engine(Repository(tmp_path), models=["broken"])
        with pytest.raises(ModelLoadError, match="broken"):
            await engine.start()
        row = engine.index()[0]
        assert row["state"] == "UNAVAILABLE"
        assert "ONNX" in row["reason"]

    run(body())


def test_load_and_unload_leave_other_models_undisturbed(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"a": AFFINE, "b": AFFINE}) as engine:
            stop = asyncio.Event()

            async def traffic() -> int:
                done = 0
                while not stop.is_set():
                    out = await engine.infer("a", None, rows(float(done)))
                    np.testing.assert_array_equal(out["y"], np.full((1, 4), 2.0 * done + 1))
                    done += 1
                return done

            client = asyncio.create_task(traffic())
            await engine.unload("b")
            assert not engine.model_ready("b")
            with pytest.raises(NotFoundError):
                await engine.infer("b", None, rows(1.0))
            assert {r["name"]: r["state"] for r in engine.index()} == {
                "a": "READY", "b": "UNAVAILABLE"
            }
            await engine.load("b")
            await engine.load("b")  # reload while loaded
            assert engine.model_ready("b")
            stop.set()
            assert await client > 0
            assert engine.model_ready("a")

    run(body())


# -- admission, deadlines, cancellation ------------------------------------------------------
def test_full_queue_rejects_with_retry_after(tmp_path: Path) -> None:
    slow = ("slow", "max_batch_size: 4\ninstances: 1\nthreads: 1\nqueue: {max_size: 4}\n")

    async def body() -> None:
        async with serving(tmp_path, {"slow": slow}) as engine:
            results = await asyncio.gather(
                *(engine.infer("slow", None, rows(0.5, width=512)) for _ in range(30)),
                return_exceptions=True,
            )
            rejected = [r for r in results if isinstance(r, QueueFullError)]
            accepted = [r for r in results if isinstance(r, dict)]
            assert rejected
            assert accepted
            assert len(rejected) + len(accepted) == 30
            assert all(r.retry_after_s > 0 for r in rejected)
            assert engine.metrics.rejected.labels("slow", "admission")._value.get() == len(rejected)

    run(body())


def test_deadline_passed_in_the_queue_is_never_computed(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"slow": SLOW}) as engine:
            backlog = [asyncio.create_task(engine.infer("slow", None, rows(0.5, 8, 512)))
                       for _ in range(4)]
            await asyncio.sleep(0)  # queued before any batch was measured: no prediction yet
            with pytest.raises(DeadlineExceededError, match="deadline exceeded"):
                await engine.infer("slow", None, rows(0.5, 1, 512), timeout_us=1000)
            await asyncio.gather(*backlog)
            stats = engine.stats("slow")
            assert stats.inference_count == 32  # the expired request was not computed
            assert stats.fail[0] == 1
            assert engine.metrics.expired.labels("slow")._value.get() == 1

    run(body())


def test_admission_rejects_a_deadline_it_cannot_meet(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"slow": SLOW}) as engine:
            await asyncio.gather(*(engine.infer("slow", None, rows(0.5, 8, 512))
                                   for _ in range(3)))  # measure full batches
            backlog = [asyncio.create_task(engine.infer("slow", None, rows(0.5, 8, 512)))
                       for _ in range(6)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError, match="cannot meet the deadline"):
                await engine.infer("slow", None, rows(0.5, 1, 512), timeout_us=100)
            await asyncio.gather(*backlog)

    run(body())


def test_cancelled_request_leaves_the_queue(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"slow": SLOW}) as engine:
            model = served(engine, "slow")
            backlog = [asyncio.create_task(engine.infer("slow", None, rows(0.5, 8, 512)))
                       for _ in range(3)]
            victim = asyncio.create_task(engine.infer("slow", None, rows(9.0, 1, 512)))
            await asyncio.sleep(0)  # all four queued; at most one batch dispatched
            assert model.scheduler.queued >= 3
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            assert model.scheduler.queued <= 2
            await asyncio.gather(*backlog)
            assert engine.stats("slow").inference_count == 24  # the victim was never computed
            assert not model._futures

    run(body())


def test_each_instance_learns_its_own_batch_times(tmp_path: Path) -> None:
    config = "max_batch_size: 8\ninstances: 2\nthreads: 1\n"

    async def body() -> None:
        async with serving(tmp_path, {"tiny": ("affine", config)}) as engine:
            model = await until_two_instances_have_lines(engine, "tiny")
            assert sorted(model.scheduler.instance_lines()) == [0, 1]
            latency = engine.stats("tiny").latency
            assert isinstance(latency["instances"], dict)
            assert sorted(latency["instances"]) == ["0", "1"]

    run(body())


# -- crashes and shutdown --------------------------------------------------------------------
def test_sigkill_fails_only_the_in_flight_batch_then_recovers(tmp_path: Path) -> None:
    config = "max_batch_size: 4\ninstances: 2\nthreads: 1\nqueue: {max_size: 256}\n"

    async def body() -> None:
        async with serving(tmp_path, {"slow": ("slow", config)}) as engine:
            model = served(engine, "slow")
            # Full batches of one request each: the crash costs exactly one request.
            tasks = [asyncio.create_task(engine.infer("slow", None, rows(0.5, 4, 512)))
                     for _ in range(60)]
            await until(lambda: model.pool.busy_count == 2)
            victim = model.pool.pids()[0]
            os.kill(victim, signal.SIGKILL)
            results = await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), 60)
            crashed = [r for r in results if isinstance(r, WorkerCrashedError)]
            assert len(crashed) == 1
            assert "exit code -9" in str(crashed[0])
            assert all(isinstance(r, dict | WorkerCrashedError) for r in results)
            assert engine.model_ready("slow")  # the other instance kept it ready
            await until(lambda: len(model.pool.pids()) == 2 and victim not in model.pool.pids())
            assert engine.metrics.worker_restarts.labels("slow")._value.get() == 1
            out = await engine.infer("slow", None, rows(0.5, 1, 512))
            assert out["y"].shape == (1, 512)

    run(body())


def test_single_instance_crash_is_not_ready_until_restarted(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path) as engine:
            model = served(engine, "tiny")
            (pid,) = model.pool.pids()
            os.kill(pid, signal.SIGKILL)
            await until(lambda: not engine.model_ready("tiny"))
            with pytest.raises(ModelNotReadyError):
                await engine.infer("tiny", None, rows(1.0))
            await until(lambda: engine.model_ready("tiny"))
            out = await engine.infer("tiny", None, rows(1.0))
            np.testing.assert_array_equal(out["y"], np.full((1, 4), 3.0))

    run(body())


def test_single_instance_crash_serves_the_queued_requests_after_restart(tmp_path: Path) -> None:
    config = "max_batch_size: 4\ninstances: 1\nthreads: 1\nqueue: {max_size: 512}\n"

    async def body() -> None:
        async with serving(tmp_path, {"slow": ("slow", config)}) as engine:
            model = served(engine, "slow")
            # Enough full batches that the worker is still busy when it is killed.
            tasks = [asyncio.create_task(engine.infer("slow", None, rows(0.5, 4, 512)))
                     for _ in range(300)]
            await until(lambda: model.pool.busy_count == 1)
            os.kill(model.pool.pids()[0], signal.SIGKILL)
            # No request arrives after the crash: the restarted worker alone must drain the queue.
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            assert all(isinstance(r, dict | WorkerCrashedError) for r in results)
            assert sum(isinstance(r, WorkerCrashedError) for r in results) <= 1
            assert engine.metrics.worker_restarts.labels("slow")._value.get() == 1

    run(body())


def test_stop_under_load_finishes_accepted_requests_and_frees_shared_memory(
    tmp_path: Path,
) -> None:
    before = shm_segments()

    async def body() -> None:
        make_repo(tmp_path, {"slow": SLOW})
        engine = Engine(Repository(tmp_path))
        await engine.start()
        # The worker's input and output slots, one pair per batch it can hold.
        assert len(shm_segments() - before) == 2 * PIPELINE_DEPTH
        tasks = [asyncio.create_task(engine.infer("slow", None, rows(0.5, 2, 512)))
                 for _ in range(20)]
        await asyncio.sleep(0.01)
        stopping = asyncio.create_task(engine.stop(grace_s=30.0))
        await asyncio.sleep(0)
        with pytest.raises(ModelNotReadyError):  # draining: accepted work only
            await engine.infer("slow", None, rows(0.5, 1, 512))
        assert engine.index()[0]["reason"] == "draining"
        await stopping
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, dict) for r in results), results
        assert not engine.ready()
        with pytest.raises(NotFoundError):
            await engine.infer("slow", None, rows(0.5, 1, 512))

    run(body())
    assert shm_segments() == before


def test_pipe_transport_setting_reaches_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRANSPORT_ENV, "pipe")
    before = shm_segments()

    async def body() -> None:
        async with serving(tmp_path) as engine:
            transports = served(engine, "tiny").pool.transports
            assert transports
            assert all(isinstance(t, PipeTransport) for t in transports)
            assert shm_segments() == before
            out = await engine.infer("tiny", None, rows(2.0, 3))
            np.testing.assert_array_equal(out["y"], np.full((3, 4), 5.0))

    run(body())
    monkeypatch.setenv(TRANSPORT_ENV, "shm")

    async def default() -> None:
        async with serving(tmp_path) as engine:
            transports = served(engine, "tiny").pool.transports
            assert all(isinstance(t, ShmTransport) for t in transports)

    run(default())

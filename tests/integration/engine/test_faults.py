"""Faults of real worker processes: restarts that cannot start, hung (stopped) workers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import resource
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.integration.engine.onnx_models import make_repo
from tests.integration.engine.test_engine import AFFINE, rows, run, served, serving, until

from surge.engine import Engine
from surge.errors import ModelLoadError, ModelNotReadyError, WorkerCrashedError
from surge.scheduler import Batch, Request, shape_key
from surge.workers.hang import HangRule
from surge.workers.pool import Placement, WorkerPool
from surge.workers.transport import SlotSpaceError

Outcome = tuple[Batch, "dict[str, np.ndarray] | None", "Exception | None"]


class Recorder:
    """What the pool called back with."""

    def __init__(self) -> None:
        self.done: list[Outcome] = []
        self.requeued: list[Batch] = []
        self.hung: list[Batch] = []
        self.spawn_failures = 0

    def on_done(self, batch: Batch, outputs: dict[str, np.ndarray] | None,
                error: Exception | None, result: object) -> None:
        copied = {k: np.array(v) for k, v in outputs.items()} if outputs is not None else None
        self.done.append((batch, copied, error))

    def on_spawn_failure(self) -> None:
        self.spawn_failures += 1


_batch_ids = iter(range(1, 1_000_000))


def batch(loop: asyncio.AbstractEventLoop, value: float = 1.0, n: int = 1) -> Batch:
    inputs = rows(value, n)
    request = Request(next(_batch_ids), inputs, n, shape_key(inputs, True), loop.time())
    return Batch(request.id, (request,), (0, n), loop.time())


@asynccontextmanager
async def pool(root: Path, instances: int, recorder: Recorder,
               **kwargs: Any) -> AsyncIterator[WorkerPool]:
    make_repo(root, {"tiny": AFFINE})
    workers = WorkerPool(str(root), "tiny", 1, [Placement("cpu", 1)] * instances,
                         recorder.on_done, on_requeue=recorder.requeued.append,
                         on_spawn_failure=recorder.on_spawn_failure, max_batch_size=8, **kwargs)
    await workers.start()
    try:
        yield workers
    finally:
        await workers.stop(5.0)


def failing_starts(monkeypatch: pytest.MonkeyPatch, times: int) -> Callable[[], int]:
    """Make the next `times` worker process starts fail as if file descriptors ran out."""
    real_start = SpawnProcess.start
    attempts = 0

    def start(process: SpawnProcess) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= times:
            raise OSError(errno.EMFILE, "Too many open files")
        real_start(process)

    monkeypatch.setattr(SpawnProcess, "start", start)
    return lambda: attempts


# -- restarts that cannot start --------------------------------------------------------------
def test_restart_that_cannot_start_a_process_is_retried_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder()

    async def body() -> None:
        async with pool(tmp_path, 1, recorder) as workers:
            (pid,) = workers.pids()
            attempts = failing_starts(monkeypatch, 3)
            os.kill(pid, signal.SIGKILL)
            await until(lambda: not workers.ready)
            # 0.1 + 0.2 + 0.4 + 0.8 s of backoff, nobody calling any API meanwhile.
            await until(lambda: workers.ready, timeout=30.0)
            assert attempts() == 4
            assert workers.spawn_failures == recorder.spawn_failures == 3
            assert workers.restarts == 1
            loop = asyncio.get_running_loop()
            workers.dispatch(batch(loop, 1.0))
            await until(lambda: bool(recorder.done))
            outputs = recorder.done[-1][1]
            assert outputs is not None
            np.testing.assert_array_equal(outputs["y"], np.full((1, 4), 3.0))

    run(body())


def _lowest_free_descriptor() -> int:
    probe = os.open(os.devnull, os.O_RDONLY)  # the kernel hands out the lowest free number
    os.close(probe)
    return probe


def test_restart_recovers_after_file_descriptors_ran_out(tmp_path: Path) -> None:
    recorder = Recorder()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def body() -> None:
        async with pool(tmp_path, 1, recorder) as workers:
            (pid,) = workers.pids()
            # No descriptor can be opened: the limit is the lowest free number (the count of
            # open ones let a restart through where earlier tests left gaps below it).
            gc.collect()
            resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_descriptor(), hard))
            try:
                os.kill(pid, signal.SIGKILL)
                await until(lambda: workers.spawn_failures >= 2)
                assert not workers.ready
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            await until(lambda: workers.ready, timeout=30.0)
            assert workers.live == 1

    run(body())


def test_failed_first_start_is_a_load_error_naming_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing_starts(monkeypatch, 1)
    make_repo(tmp_path, {"tiny": AFFINE})
    workers = WorkerPool(str(tmp_path), "tiny", 1, [Placement("cpu", 1)], Recorder().on_done)
    with pytest.raises(ModelLoadError, match="cannot start a worker: .*Too many open files"):
        run(workers.start())


# -- hung workers ----------------------------------------------------------------------------
def test_stopped_worker_is_killed_its_batch_handed_back_and_it_is_replaced(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    rule = HangRule(multiple=10.0, min_s=0.3)

    async def body() -> None:
        async with pool(tmp_path, 2, recorder, hang=rule, estimate=lambda size: 0.001,
                        on_hung=recorder.hung.append) as workers:
            loop = asyncio.get_running_loop()
            stopped = workers.pids()[0]  # the first of two idle workers takes the next batch
            os.kill(stopped, signal.SIGSTOP)
            try:
                first, behind = batch(loop, 1.0), batch(loop, 2.0)
                workers.dispatch(first)
                workers.dispatch(batch(loop, 3.0))  # the other worker: answered
                workers.dispatch(behind)  # waits in the stopped worker's second slot
                await until(lambda: workers.hangs == 1, timeout=5.0)
                assert loop.time() - first.dispatched >= 0.3
                assert recorder.hung == [first]  # handed back, not failed as a crash
                assert recorder.requeued == [behind]  # never started: queued again
                assert workers.live == 1
                assert workers.ready
                await until(lambda: workers.live == 2)
                assert stopped not in workers.pids()
                assert workers.restarts == 1
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signal.SIGCONT)
            with pytest.raises(ProcessLookupError):
                os.kill(stopped, 0)  # killed and reaped, not left stopped
            answered = [b for b, outputs, _ in recorder.done if outputs is not None]
            assert len(answered) == 1

    run(body())


def test_without_a_hang_handler_the_hung_batch_fails_clearly(tmp_path: Path) -> None:
    recorder = Recorder()

    async def body() -> None:
        async with pool(tmp_path, 1, recorder, hang=HangRule(min_s=0.2),
                        estimate=lambda size: 0.001) as workers:
            loop = asyncio.get_running_loop()
            (stopped,) = workers.pids()
            os.kill(stopped, signal.SIGSTOP)
            workers.dispatch(batch(loop))
            await until(lambda: bool(recorder.done), timeout=5.0)
            _, outputs, error = recorder.done[0]
            assert outputs is None
            assert isinstance(error, WorkerCrashedError)
            assert "hung (no result after 0.20 s) and was killed" in str(error)
            await until(lambda: workers.ready)

    run(body())


def test_no_hang_limit_before_any_batch_was_measured(tmp_path: Path) -> None:
    recorder = Recorder()

    async def body() -> None:
        async with pool(tmp_path, 1, recorder, hang=HangRule(min_s=0.05),
                        estimate=lambda size: None) as workers:
            loop = asyncio.get_running_loop()
            (pid,) = workers.pids()
            os.kill(pid, signal.SIGSTOP)
            workers.dispatch(batch(loop))
            await asyncio.sleep(0.5)
            assert workers.hangs == 0
            os.kill(pid, signal.SIGCONT)
            await until(lambda: bool(recorder.done))
            assert recorder.done[0][1] is not None

    run(body())


# -- through the Engine ----------------------------------------------------------------------
def hanging(instances: int) -> tuple[str, str]:
    """The affine model (well under a millisecond a batch) with a short hang limit."""
    return ("affine", f"max_batch_size: 1\ninstances: {instances}\nthreads: 1\n"
                      "hang_multiple: 5\nhang_min_ms: 300\n")


async def warm(engine: Engine, name: str, count: int = 20) -> None:
    """Measure batches, so that admission and the hang limit have an estimate."""
    for i in range(count):
        await engine.infer(name, None, rows(float(i)))


def counter(engine: Engine, metric: str, name: str) -> float:
    value: float = getattr(engine.metrics, metric).labels(name)._value.get()
    return value


def test_two_instances_keep_serving_while_one_restarts(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"m": hanging(2)}) as engine:
            model = served(engine, "m")
            victim = model.pool.pids()[0]
            os.kill(victim, signal.SIGKILL)
            await until(lambda: model.pool.live == 1)
            answered = 0
            while model.pool.live < 2:  # the restart takes a second or two
                assert engine.model_ready("m")
                out = await engine.infer("m", None, rows(1.0))
                np.testing.assert_array_equal(out["y"], np.full((1, 4), 3.0))
                answered += 1
            assert answered > 10
            assert victim not in model.pool.pids()
            assert counter(engine, "live_instances", "m") == 2

    run(body())


def test_hung_worker_is_replaced_and_its_requests_retried_within_their_deadlines(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"m": hanging(2)}) as engine:
            model = served(engine, "m")
            await warm(engine, "m")
            stopped = model.pool.pids()[0]  # the first of two idle workers takes the next batch
            os.kill(stopped, signal.SIGSTOP)
            try:
                loop = asyncio.get_running_loop()
                start = loop.time()
                results = await asyncio.wait_for(asyncio.gather(*(
                    engine.infer("m", None, rows(float(i)), timeout_us=3_000_000)
                    for i in range(10))), 10.0)
                assert loop.time() - start < 3.0  # within every deadline
                for i, out in enumerate(results):
                    np.testing.assert_array_equal(out["y"], np.full((1, 4), 2.0 * i + 1))
                assert counter(engine, "worker_hangs", "m") == 1
                assert engine.model_ready("m")  # the other instance kept it ready
                await until(lambda: model.pool.live == 2)
                assert stopped not in model.pool.pids()
                assert counter(engine, "worker_restarts", "m") == 1
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signal.SIGCONT)
            for i in range(20):  # the stall poisoned nothing: deadlines are admitted again
                out = await engine.infer("m", None, rows(float(i)), timeout_us=200_000)
                np.testing.assert_array_equal(out["y"], np.full((1, 4), 2.0 * i + 1))

    run(body())


def test_single_hung_instance_is_not_ready_then_serves_its_retried_request(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"m": hanging(1)}) as engine:
            model = served(engine, "m")
            await warm(engine, "m")
            (stopped,) = model.pool.pids()
            os.kill(stopped, signal.SIGSTOP)
            task = asyncio.create_task(engine.infer("m", None, rows(4.0), timeout_us=10_000_000))
            await until(lambda: counter(engine, "worker_hangs", "m") == 1, timeout=5.0)
            assert not engine.model_ready("m")
            with pytest.raises(ModelNotReadyError):
                await engine.infer("m", None, rows(1.0))
            out = await asyncio.wait_for(task, 10.0)  # computed by the restarted worker
            np.testing.assert_array_equal(out["y"], np.full((1, 4), 9.0))
            assert engine.model_ready("m")

    run(body())


def test_hung_request_without_time_to_retry_fails_clearly(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(tmp_path, {"m": hanging(1)}) as engine:
            model = served(engine, "m")
            await warm(engine, "m")
            os.kill(model.pool.pids()[0], signal.SIGSTOP)
            # Its deadline passes before the hang limit (300 ms): answered at the limit.
            with pytest.raises(WorkerCrashedError, match="hung .* no time left"):
                await asyncio.wait_for(
                    engine.infer("m", None, rows(1.0), timeout_us=200_000), 2.0)
            await until(lambda: engine.model_ready("m"))

    run(body())


def test_a_stalled_batch_does_not_shut_out_requests_with_deadlines(tmp_path: Path) -> None:
    config = "max_batch_size: 1\ninstances: 1\nthreads: 1\n"  # hang limit: 2 s, the default

    async def body() -> None:
        async with serving(tmp_path, {"m": ("affine", config)}) as engine:
            model = served(engine, "m")
            await warm(engine, "m")
            (pid,) = model.pool.pids()
            os.kill(pid, signal.SIGSTOP)
            task = asyncio.create_task(engine.infer("m", None, rows(1.0)))
            await asyncio.sleep(1.2)  # stopped mid-batch, short of the hang limit
            os.kill(pid, signal.SIGCONT)
            await asyncio.wait_for(task, 5.0)
            assert counter(engine, "worker_hangs", "m") == 0
            for i in range(20):
                out = await engine.infer("m", None, rows(float(i)), timeout_us=200_000)
                np.testing.assert_array_equal(out["y"], np.full((1, 4), 2.0 * i + 1))

    run(body())


# -- shared memory ---------------------------------------------------------------------------
def test_a_huge_max_batch_does_not_reserve_shared_memory_for_it_up_front(tmp_path: Path) -> None:
    """A full batch of 10^10 rows is more /dev/shm than any machine has: the slots start small
    and grow with the batches that come (the load failed with ENOSPC)."""
    recorder = Recorder()
    make_repo(tmp_path, {"tiny": AFFINE})
    workers = WorkerPool(str(tmp_path), "tiny", 1, [Placement("cpu", 1)], recorder.on_done,
                         max_batch_size=10**10)

    async def body() -> None:
        await workers.start()
        try:
            workers.dispatch(batch(asyncio.get_running_loop(), 1.0, n=3))
            await until(lambda: bool(recorder.done), timeout=30.0)
        finally:
            await workers.stop(5.0)

    run(body())
    [(_, outputs, error)] = recorder.done
    assert error is None
    assert outputs is not None
    np.testing.assert_array_equal(outputs["y"], np.full((3, 4), 3.0))


def test_a_batch_without_room_in_shared_memory_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch whose slot cannot grow (a full /dev/shm) fails with 503 naming shared memory;
    the worker keeps its process and slots and computes the next batch (it was restarted as
    crashed, and the slot it had closed stayed closed)."""
    import surge.workers.placement
    import surge.workers.transport

    monkeypatch.setattr(surge.workers.placement, "FIRST_SLOT_MAX_BYTES", 4096)
    create = surge.workers.transport._create

    def full_above_4096(size: int) -> Any:
        if size > 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return create(size)

    monkeypatch.setattr(surge.workers.transport, "_create", full_above_4096)
    recorder = Recorder()

    async def body() -> None:
        async with pool(tmp_path, 1, recorder) as workers:
            loop = asyncio.get_running_loop()
            pids = workers.pids()
            workers.dispatch(batch(loop, 1.0, n=300))  # 300 rows of 4 FP32: 4,800 bytes
            await until(lambda: len(recorder.done) == 1)
            workers.dispatch(batch(loop, 2.0, n=1))
            await until(lambda: len(recorder.done) == 2)
            assert workers.pids() == pids

    run(body())
    (_, outputs, error), (_, small, small_error) = recorder.done
    assert outputs is None
    assert isinstance(error, SlotSpaceError)
    assert error.status == 503
    assert "no shared memory left for a batch" in str(error)
    assert small_error is None
    assert small is not None
    np.testing.assert_array_equal(small["y"], np.full((1, 4), 5.0))


def test_stopping_a_pool_kills_a_worker_still_loading_its_model_at_once(tmp_path: Path) -> None:
    """A loading worker reads no Stop before its load ends: stop waited out its whole timeout
    (a drain, an unload, or a start given up, for a model that takes minutes to load)."""
    from tests.integration.server.models import write_slow_to_load

    write_slow_to_load(tmp_path, 120, module="tests.integration.server.models")

    async def body() -> float:
        recorder = Recorder()
        workers = WorkerPool(str(tmp_path), "late", 1, [Placement("cpu", 1)], recorder.on_done)
        starting = asyncio.create_task(workers.start())
        await asyncio.sleep(3.0)  # the worker is inside the model's factory by now
        began = asyncio.get_running_loop().time()
        await workers.stop(60.0)
        took = asyncio.get_running_loop().time() - began
        with contextlib.suppress(ModelLoadError):
            await starting
        return took

    assert asyncio.run(body()) < 30.0


def never_loads(spec: object, conn: object) -> None:
    """A worker process whose load never ends (a warm-up sample the model never finishes)."""
    time.sleep(600)


def test_a_restart_that_never_loads_is_killed_and_restarted_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It stayed loading for good, its instance out of the pool until the model was reloaded
    (the first start has the engine's load_timeout_s; restarts had none)."""
    recorder = Recorder()

    async def body() -> None:
        async with pool(tmp_path, 1, recorder, load_timeout_s=1.0) as workers:
            (pid,) = workers.pids()
            monkeypatch.setattr(WorkerPool, "_entry",
                                lambda self, index: (never_loads, self.spec(index)))
            os.kill(pid, signal.SIGKILL)
            await until(lambda: workers.restarts >= 2, timeout=30.0)  # the hung one killed
            assert not workers.ready
            monkeypatch.undo()
            await until(lambda: workers.ready, timeout=60.0)
            workers.dispatch(batch(asyncio.get_running_loop(), 1.0))
            await until(lambda: bool(recorder.done))
            assert recorder.done[-1][2] is None

    run(body())

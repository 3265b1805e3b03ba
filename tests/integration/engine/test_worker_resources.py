"""Real worker processes when the machine runs short: file descriptors, shared memory."""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
import signal
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import pytest
from tests.integration.engine.onnx_models import make_repo
from tests.integration.engine.test_engine import AFFINE, run, shm_segments, until
from tests.integration.engine.test_faults import Recorder, batch, pool

from surge.errors import ModelLoadError, WorkerCrashedError
from surge.workers.pool import Placement, WorkerPool


def test_a_worker_whose_slots_cannot_be_mapped_fails_its_load_and_leaves_no_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of file descriptors when a ready worker's slots are made (mmap duplicates the one
    it maps): the load failed as 'worker exited', the resource tracker printed a KeyError for
    a name it was asked to forget but never registered, and the slots made before stayed in
    /dev/shm. Now the load fails naming the cause and every segment made is gone."""
    make_repo(tmp_path, {"tiny": AFFINE})
    real_mmap = mmap.mmap
    mapped = 0

    def out_of_descriptors(*args: Any, **kwargs: Any) -> mmap.mmap:
        nonlocal mapped
        mapped += 1
        if mapped > 2:  # two slots made, the third cannot be
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_mmap(*args, **kwargs)

    registered: set[str] = set()
    forgotten_unknown: list[str] = []
    real_register, real_unregister = resource_tracker.register, resource_tracker.unregister

    def register(name: str, rtype: str) -> None:
        registered.add(name)
        real_register(name, rtype)

    def unregister(name: str, rtype: str) -> None:
        if name not in registered:
            forgotten_unknown.append(name)
            return  # the tracker would print a KeyError traceback
        real_unregister(name, rtype)

    monkeypatch.setattr(resource_tracker, "register", register)
    monkeypatch.setattr(resource_tracker, "unregister", unregister)
    before = shm_segments()
    workers = WorkerPool(str(tmp_path), "tiny", 1, [Placement("cpu", 1)], Recorder().on_done,
                         max_batch_size=8)

    async def body() -> None:
        monkeypatch.setattr(mmap, "mmap", out_of_descriptors)
        try:
            await workers.start()
        finally:
            monkeypatch.setattr(mmap, "mmap", real_mmap)
            await workers.stop(5.0)

    with pytest.raises(ModelLoadError, match="no shared memory for worker 0's tensors "
                                             r"\(Too many open files\)"):
        run(body())
    assert mapped == 3
    assert forgotten_unknown == []
    assert shm_segments() == before


def test_a_worker_killed_with_batches_it_never_read_is_a_plain_death(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that dies with messages unread in its pipe resets it instead of closing it:
    that was logged as an unexpected pipe failure with a traceback before 'died'. It is a
    death like any other: one line, the batch it held failed, the one behind it queued again,
    and the worker restarted."""
    recorder = Recorder()

    async def body() -> None:
        async with pool(tmp_path, 1, recorder) as workers:
            loop = asyncio.get_running_loop()
            (pid,) = workers.pids()
            os.kill(pid, signal.SIGSTOP)  # reads nothing from now on
            first, behind = batch(loop, 1.0), batch(loop, 2.0)
            workers.dispatch(first)
            workers.dispatch(behind)
            os.kill(pid, signal.SIGKILL)
            await until(lambda: workers.restarts == 1)
            await until(lambda: workers.ready)
            assert recorder.requeued == [behind]
            [(failed, outputs, error)] = recorder.done
            assert failed is first
            assert outputs is None
            assert isinstance(error, WorkerCrashedError)
            assert "died (exit code -9)" in str(error)

    with caplog.at_level(logging.INFO, logger="surge.workers.pool"):
        run(body())
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Connection reset" not in caplog.text
    assert "died (exit code -9); restarting" in caplog.text


def test_a_worker_killed_while_loading_fails_the_load_naming_how_it_ended(
    tmp_path: Path,
) -> None:
    """A worker that dies loading without a word (killed when memory ran out, a crash in
    native code) failed the load as just 'worker exited'."""
    from tests.integration.server.models import write_slow_to_load

    write_slow_to_load(tmp_path, 120, module="tests.integration.server.models")
    workers = WorkerPool(str(tmp_path), "late", 1, [Placement("cpu", 1)], Recorder().on_done)

    async def body() -> None:
        starting = asyncio.create_task(workers.start())
        await until(lambda: workers._workers[0] is not None)
        worker = workers._workers[0]
        assert worker is not None
        assert worker.process.pid is not None
        os.kill(worker.process.pid, signal.SIGKILL)
        await starting

    with pytest.raises(ModelLoadError, match=r"worker 0 exited while loading the model "
                                             r"\(exit code -9, SIGKILL\)"):
        run(body())

"""A worker whose front end dies (kill -9) while it computes a batch finds the pipe broken when
it answers: it exits as when the pipe closes while it waits, without a traceback in the
server's log."""

from __future__ import annotations

from typing import Any

import numpy as np

from surge.workers import shared_worker, worker
from surge.workers.messages import RunBatch


class _GonePipe:
    """The worker's end of a pipe whose front end died after sending one batch."""

    def __init__(self) -> None:
        self.sent = [RunBatch(batch_id=1, tensors=())]
        self.closed = False

    def recv(self) -> Any:
        if not self.sent:
            raise EOFError
        return self.sent.pop()

    def send(self, message: Any) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def close(self) -> None:
        self.closed = True


class _Ends:
    """The shared-memory side of the worker's end, with nothing mapped."""

    def inputs(self, conn: Any, message: RunBatch) -> dict[str, np.ndarray]:
        return {}

    def reply(self, conn: Any, message: RunBatch, outputs: Any, done: Any) -> None:
        conn.send(done)

    def close(self) -> None:
        pass


class _Ran:
    outputs: dict[str, np.ndarray] = {}
    rejected: tuple[int, ...] = ()
    other_threads_cpu_ns = 0
    preprocess_cpu_ns = 0


def test_a_broken_pipe_on_the_answer_ends_the_worker_quietly(monkeypatch: Any) -> None:
    monkeypatch.setattr(worker, "WorkerEnd", _Ends)
    monkeypatch.setattr(worker, "run_rows", lambda runner, inputs: _Ran())
    conn = _GonePipe()
    worker.serve(object(), conn)  # type: ignore[arg-type]
    assert conn.closed


def test_a_shared_worker_ends_quietly_too(monkeypatch: Any) -> None:
    monkeypatch.setattr(shared_worker, "WorkerEnd", _Ends)
    conn = _GonePipe()
    shared_worker.SharedWorker("repo", conn).serve()  # type: ignore[arg-type]
    assert conn.closed

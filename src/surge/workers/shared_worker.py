"""A shared worker process: several models, each its own runner, loaded and dropped one by one.

It starts empty and answers GroupReady; the front end then sends LoadModel for each model of
its group. Every RunBatch names the model (its member id) it is for. Messages are handled in
order, so a model's load holds the batches queued behind it in this process (the group's other
processes keep computing), and an UnloadModel comes after every batch sent for that model.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from multiprocessing.connection import Connection

from surge.runtimes.base import Runner
from surge.workers.messages import (
    BatchDone,
    GroupReady,
    LoadModel,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    RunBatch,
    Stop,
    UnloadModel,
)
from surge.workers.transport import WorkerEnd
from surge.workers.worker import WorkerSpec, load, prepare_process, run_batch

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class GroupSpec:
    """What a shared worker process needs at start (picklable: crosses the spawn)."""

    root: str
    group: str
    threads: int  # the process's OpenMP/BLAS threads; each model's session has its own


def group_main(spec: GroupSpec, conn: Connection) -> None:
    """Process entry point (spawn): report GroupReady, then serve until Stop or EOF."""
    # Passive waits: the threads of a hundred idle sessions must not spin on the cores.
    prepare_process(spec.threads, spin_wait=False)
    conn.send(GroupReady(os.getpid(), spec.threads))
    SharedWorker(spec.root, conn).serve()


def rss_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class SharedWorker:
    """The models of one process by member id, and the message loop over them."""

    def __init__(self, root: str, conn: Connection) -> None:
        self.root = root
        self.conn = conn
        self.runners: dict[str, Runner] = {}
        self.end = WorkerEnd()

    def serve(self) -> None:
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    break
                if isinstance(message, Stop):
                    break
                try:
                    self.handle(message)
                except (BrokenPipeError, ConnectionResetError):
                    break  # the front end died (kill -9) before the answer: nobody to tell
        finally:
            self.runners.clear()
            self.end.close()
            self.conn.close()

    def handle(self, message: object) -> None:
        if isinstance(message, RunBatch):
            self.run(message)
        elif isinstance(message, LoadModel):
            self.load(message)
        elif isinstance(message, UnloadModel):
            self.unload(message.member)

    def run(self, message: RunBatch) -> None:
        runner = self.runners.get(message.model)
        if runner is not None:
            run_batch(runner, self.conn, self.end, message)
            return
        # Never sent by the front end (it dispatches only to processes that loaded the model);
        # the inputs are read all the same, so the pipe stays in step.
        self.end.inputs(self.conn, message)
        self.conn.send(BatchDone(message.batch_id,
                                 error=f"model {message.model!r} is not loaded in this worker"))

    def load(self, message: LoadModel) -> None:
        spec = WorkerSpec(self.root, message.ref, message.version, message.threads,
                          message.device, 0, message.spin_wait, message.warmup)
        before = rss_bytes()
        try:
            runner = load(spec)
        except Exception as exc:  # the model fails its load; the process and its others live on
            self.conn.send(ModelLoadFailed(message.member, f"{type(exc).__name__}: {exc}"))
            return
        self.runners[message.member] = runner
        self.conn.send(ModelLoaded(message.member, runner.signature, runner.device,
                                   max(0, rss_bytes() - before)))

    def unload(self, member: str) -> None:
        self.runners.pop(member, None)
        gc.collect()  # sessions hold native memory: free it now, not at some later collection
        self.conn.send(ModelUnloaded(member, rss_bytes()))

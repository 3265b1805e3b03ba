"""A worker reports the CPU its thread spent on each batch, and the model's statistics add it up:
unlike the batch's wall times, it does not count time the worker spent waiting."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np

from surge.engine.stats import Counters
from surge.runtimes.base import Signature, TensorSpec
from surge.workers.messages import BatchDone
from surge.workers.transport import PipeTransport, WorkerEnd
from surge.workers.worker import run_batch

BURN_MS, SLEEP_MS = 20, 60


class BurnThenSleep:
    """A runner that spins BURN_MS of its thread's CPU, then sleeps SLEEP_MS (no CPU)."""

    signature = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        until = time.thread_time() + BURN_MS / 1e3
        while time.thread_time() < until:
            pass
        time.sleep(SLEEP_MS / 1e3)
        return {"y": inputs["x"] * 2}


def test_a_batch_done_carries_the_worker_threads_cpu() -> None:
    front, back = mp.Pipe()
    transport, end = PipeTransport(), WorkerEnd()
    try:
        transport.send(front, 1, {"x": [np.ones((2, 4), np.float32)]})
        run_batch(BurnThenSleep(), back, end, back.recv())  # type: ignore[arg-type]
        done = front.recv()
        assert not done.error, done.error  # else no outputs follow to receive
        transport.receive(front, done)
    finally:
        end.close()
        front.close()
        back.close()
    assert isinstance(done, BatchDone)
    assert BURN_MS * 1e6 <= done.cpu_ns < (BURN_MS + SLEEP_MS / 2) * 1e6
    assert done.input_ns + done.infer_ns >= (BURN_MS + SLEEP_MS) * 1e6  # the wall time


def test_statistics_add_up_the_batches_cpu() -> None:
    counters = Counters()
    counters.count_batch(4, BatchDone(1, infer_ns=9_000, cpu_ns=3_000), 0, 0)
    counters.count_batch(2, BatchDone(2, infer_ns=9_000, cpu_ns=2_000), 0, 0)
    counters.count_batch(1, None, 0, 0)  # a batch no worker timed
    assert counters.snapshot("m", 1).compute_cpu == (2, 5_000)

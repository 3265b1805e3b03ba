"""The worker process: load one model instance, warm it up, then compute batches until told to stop."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from surge.platform import set_thread_env
from surge.runtimes.base import Runner, SpinWait, openmp_wait_policy, run_rows
from surge.workers.messages import BatchDone, LoadFailed, Ready, RunBatch, Stop, Warmup
from surge.workers.transport import WorkerEnd

if TYPE_CHECKING:
    from surge.repository import Repository
    from surge.runtimes import RunnerOptions

@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to load its model itself (picklable: crosses the spawn)."""

    root: str
    ref: str  # model name, or name@variant
    version: int | None
    threads: int
    device: str
    index: int = 0
    spin_wait: SpinWait = False  # the model config's: how idle engine threads wait
    warmup: Warmup = None  # the front end's `model_warmup` (a load's override); None: config.yaml's


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Process entry point (spawn): load, warm up, report Ready, serve."""
    prepare_process(spec.threads, spec.spin_wait)
    try:
        runner = load(spec)
    except Exception as exc:  # any failure is reported, then the worker exits
        conn.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    conn.send(Ready(os.getpid(), spec.threads, runner.device, runner.signature))
    serve(runner, conn)


def prepare_process(threads: int, spin_wait: SpinWait) -> None:
    """Signals and thread settings of a worker process, before any engine is imported."""
    # The front end owns shutdown: it sends Stop, or the pipe closes when it dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the front end's reload, to a process group
    set_thread_env(threads)
    os.environ["OMP_WAIT_POLICY"] = openmp_wait_policy(spin_wait)


def load(spec: WorkerSpec) -> Runner:
    """The runner `spec` names, warmed up."""
    from surge.repository import Repository
    from surge.runtimes import RunnerOptions

    options = RunnerOptions(intra_op_threads=spec.threads, device=spec.device,
                            spin_wait=spec.spin_wait)
    return load_warm(Repository(spec.root), spec.ref, spec.version, options, spec.threads,
                     spec.warmup)


def load_warm(repository: Repository, ref: str, version: int | None, options: RunnerOptions,
              threads: int, warmup: Warmup = None) -> Runner:
    """The serving runner of `ref`, warmed up: the engine's own run of example inputs, then
    the `model_warmup` samples (every instance runs them before it is ready): `warmup`, the
    front end's, else config.yaml's."""
    from surge.processors.in_worker import serving_runner
    from surge.workers.warmup import warm_up

    loaded = repository.load(ref, version, options)
    runner = serving_runner(loaded, threads)
    runner.warmup()
    warm_up(runner, loaded.config, repository.model_dir(loaded.name), warmup)
    return runner


def serve(runner: Runner, conn: Connection) -> None:
    """Compute each RunBatch and answer BatchDone, until Stop or the front end goes away."""
    end = WorkerEnd()
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, Stop):
                break
            if isinstance(message, RunBatch):
                try:
                    run_batch(runner, conn, end, message)
                except (BrokenPipeError, ConnectionResetError):
                    break  # the front end died (kill -9) while the batch ran: nobody to answer
    finally:
        end.close()
        conn.close()


def run_batch(runner: Runner, conn: Connection, end: WorkerEnd, message: RunBatch) -> None:
    """Compute one batch and answer its BatchDone (an error fails the batch, not the worker)."""
    started, cpu = time.perf_counter_ns(), time.thread_time_ns()
    inputs = end.inputs(conn, message)
    loaded = time.perf_counter_ns()
    try:
        ran = run_rows(runner, inputs)
    except Exception as exc:  # a bad batch fails its requests, not the worker
        conn.send(BatchDone(message.batch_id, error=f"{type(exc).__name__}: {exc}"))
        return
    finally:
        del inputs  # release the views of the input slot
    done = BatchDone(message.batch_id, input_ns=loaded - started,
                     infer_ns=time.perf_counter_ns() - loaded,
                     cpu_ns=time.thread_time_ns() - cpu + ran.other_threads_cpu_ns,
                     rejected=ran.rejected,
                     preprocess_cpu_ns=ran.preprocess_cpu_ns)
    end.reply(conn, message, ran.outputs, done)

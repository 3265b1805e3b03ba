"""A scripted instance pool and a hand-advanced clock: the driver of a served model, no processes.

`FakePool` keeps WorkerPool's contract at the seam: each instance holds up to `depth` batches
and answers them in the order it got them; a crash fails the batch it was computing, sends the
ones waiting behind it back (`on_requeue`) and reports the restart; `stop` fails what is held
the same way. The test decides when a batch finishes, how long it took and when an instance
comes back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from surge.engine import Engine, PoolEvents, PoolSpec, ServedModel
from surge.errors import WorkerCrashedError
from surge.repository import Repository
from surge.runtimes.base import Signature, TensorSpec
from surge.scheduler import Batch
from surge.workers.messages import BatchDone
from surge.workers.pool import BatchResult

WIDTH = 4
SIGNATURE = Signature((TensorSpec("x", "FP32", (-1, WIDTH)),),
                      (TensorSpec("y", "FP32", (-1, WIDTH)),),
                      batched=True, max_batch_size=8, platform="fake")


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakePool:
    """The instances of one version, computing y = 2x + 1 when the test finishes a batch."""

    def __init__(self, spec: PoolSpec, events: PoolEvents, depth: int = 2) -> None:
        self.spec, self.events, self.depth = spec, events, depth
        self.signature: Signature | None = None
        self.held: list[deque[Batch]] = [deque() for _ in range(spec.config.instances)]
        self.alive = [False] * spec.config.instances
        self.dispatched: list[Batch] = []
        self.stopped = False

    # -- InstancePool ---------------------------------------------------------------------------
    @property
    def instances(self) -> int:
        return len(self.held)

    @property
    def ready(self) -> bool:
        return self.signature is not None and not self.stopped and any(self.alive)

    @property
    def idle_count(self) -> int:
        return sum(self._free(i) for i in range(self.instances))

    @property
    def idle_workers(self) -> int:
        return sum(1 for i in range(self.instances) if self.alive[i] and not self.held[i])

    async def start(self) -> None:
        self.alive = [True] * self.instances
        self.signature = SIGNATURE

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped = True
        for index in range(self.instances):
            self._lose(index, WorkerCrashedError("model is being stopped"))

    def devices(self) -> tuple[str, ...]:
        return tuple("cpu" for alive in self.alive if alive)

    def dispatch(self, batch: Batch) -> None:
        index = max(range(self.instances), key=self._free)
        assert self._free(index) > 0, "the driver dispatched to a full pool"
        self.held[index].append(batch)
        self.dispatched.append(batch)

    # -- what the test scripts --------------------------------------------------------------------
    def finish(self, index: int = 0, *, input_ns: int = 1_000, infer_ns: int = 4_000,
               output_ns: int = 500, service_s: float | None = None, cpu_ns: int = 0,
               preprocess_cpu_ns: int = 0) -> Batch:
        """Instance `index` answers the batch it is computing."""
        batch = self.held[index].popleft()
        x = np.concatenate([r.inputs["x"] for r in batch.requests])
        done = BatchDone(batch.id, input_ns=input_ns, infer_ns=infer_ns, output_ns=output_ns,
                         cpu_ns=cpu_ns, preprocess_cpu_ns=preprocess_cpu_ns)
        own_s = (input_ns + infer_ns + output_ns) / 1e9
        self.events.on_done(batch, {"y": 2 * x + 1}, None,
                            BatchResult(done, own_s if service_s is None else service_s))
        return batch

    def fail(self, index: int = 0, message: str = "runner raised") -> Batch:
        """The runner of instance `index` raised on the batch it is computing."""
        batch = self.held[index].popleft()
        self.events.on_done(batch, None, RuntimeError(message), None)
        return batch

    def crash(self, index: int = 0) -> None:
        """Instance `index` dies (as if killed); it stays down until `restart`."""
        self._lose(index, WorkerCrashedError(f"worker {index} died while computing this request"))
        self.events.on_restart()

    def hang(self, index: int = 0) -> Batch:
        """Instance `index` is found hung on the batch it computes: killed, as WorkerPool does."""
        batch = self.held[index].popleft()
        self._lose(index, WorkerCrashedError(f"worker {index} hung"), started=0)
        self.events.on_restart()
        self.events.on_hung(batch)
        return batch

    def restart(self, index: int = 0) -> None:
        self.alive[index] = True
        self.events.on_ready()

    def _free(self, index: int) -> int:
        return self.depth - len(self.held[index]) if self.alive[index] else 0

    def _lose(self, index: int, error: Exception, started: int = 1) -> None:
        self.alive[index] = False
        held = list(self.held[index])
        self.held[index].clear()
        for position, batch in enumerate(held):
            if position < started:
                self.events.on_done(batch, None, error, None)
            else:
                self.events.on_requeue(batch)


class FakePools:
    """A pool factory for the Engine that remembers the pools it built."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self.built: list[FakePool] = []

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> FakePool:
        pool = FakePool(spec, events, self.depth)
        self.built.append(pool)
        return pool


def make_repo(root: Path, config: str, name: str = "m", versions: tuple[int, ...] = (1,)) -> Path:
    """A repository whose model has version directories and a config, and no model file:
    the fake pools never load one."""
    for version in versions:
        (root / name / str(version)).mkdir(parents=True)
    (root / name / "config.yaml").write_text(config)
    return root


class Served:
    """An Engine serving one model on fake pools, and the handles a test drives it with."""

    def __init__(self, engine: Engine, pools: FakePools, clock: FakeClock) -> None:
        self.engine, self.pools, self.clock = engine, pools, clock

    @property
    def pool(self) -> FakePool:
        return self.pools.built[-1]

    @property
    def model(self) -> ServedModel:
        return self.engine._find("m", None)

    async def infer(self, *values: float, rows: int = 1, **kwargs: Any
                    ) -> list[asyncio.Task[dict[str, np.ndarray]]]:
        """One request per value (`rows` rows of it), sent now: queued or answered on return."""
        tasks = [asyncio.create_task(self.engine.infer(
            "m", None, {"x": np.full((rows, WIDTH), value, np.float32)}, **kwargs))
            for value in values]
        await settle()
        return tasks

    async def tick(self, seconds: float = 0.0) -> None:
        """Move the clock, wake the driver and let every ready task run."""
        self.clock.advance(seconds)
        self.model.wake()
        await settle()


async def settle() -> None:
    """Let the tasks that can run, run (the driver, the awaiting requests)."""
    for _ in range(10):
        await asyncio.sleep(0)


@asynccontextmanager
async def serving(root: Path, config: str, depth: int = 2) -> AsyncIterator[Served]:
    make_repo(root, config)
    pools, clock = FakePools(depth), FakeClock()
    engine = Engine(Repository(root), pool_factory=pools, clock=clock)
    await engine.start()
    try:
        yield Served(engine, pools, clock)
    finally:
        await engine.stop(grace_s=0.0)


def values(batch: Batch) -> list[float]:
    """The values of a batch's requests, in order (each request's rows hold one value)."""
    return [float(r.inputs["x"].flat[0]) for r in batch.requests]

"""Shared worker groups: several tiny models in one worker process, each served on its own."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import generate_latest
from tests.integration.engine.test_engine import run, shm_segments, until

from surge.engine import Engine
from surge.errors import NotFoundError, WorkerCrashedError
from surge.repository import Repository
from surge.runtimes import RunnerOptions
from surge.workers.group import GroupMember, WorkerGroup

SHARED = "max_batch_size: 8\nbatching: {max_queue_delay_ms: 2}\nworker: shared\n"


def scaled(path: Path, k: float) -> Path:
    """y = k x + k on FP32 [-1, 4]: each model of a test answers differently."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    weight = numpy_helper.from_array(np.array(k, np.float32), "k")
    nodes = [helper.make_node("Mul", ["x", "k"], ["kx"]), helper.make_node("Add", ["kx", "k"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "scaled", [x], [y], [weight]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_models(root: Path, count: int, config: str = SHARED, prefix: str = "m") -> list[str]:
    names = [f"{prefix}{i}" for i in range(count)]
    for i, name in enumerate(names):
        scaled(root / name / "1" / "model.onnx", float(i + 1))
        (root / name / "config.yaml").write_text(config)
    return names


@asynccontextmanager
async def engine_on(root: Path) -> AsyncIterator[Engine]:
    engine = Engine(Repository(root))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace_s=5.0)


def group(engine: Engine, name: str = "default") -> WorkerGroup:
    return engine.groups.groups[name]


def x_of(value: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 4), value, np.float32)}


def expected(name: str, value: float, n: int = 1) -> np.ndarray:
    k = float(name.lstrip("abcdefghijklmnopqrstuvwxyz")) + 1
    return np.full((n, 4), k * value + k, np.float32)


async def answers_all(engine: Engine, names: list[str], value: float = 2.0) -> None:
    results = await asyncio.gather(*(engine.infer(n, None, x_of(value)) for n in names))
    for name, result in zip(names, results, strict=True):
        np.testing.assert_array_equal(result["y"], expected(name, value))


# -- answers ---------------------------------------------------------------------------------
def test_many_models_in_one_process_answer_like_their_in_process_runners(tmp_path: Path) -> None:
    names = make_models(tmp_path, 12)

    async def body() -> None:
        async with engine_on(tmp_path) as engine:
            assert len(group(engine).pids()) == 1  # twelve models, one worker process
            assert all(isinstance(engine._find(n, None).pool, GroupMember) for n in names)
            rng = np.random.default_rng(0)
            picks = [names[i] for i in rng.integers(0, len(names), 96)]
            inputs = [rng.random((int(rng.integers(1, 4)), 4), dtype=np.float32) for _ in picks]
            got = await asyncio.gather(*(engine.infer(n, None, {"x": x})
                                         for n, x in zip(picks, inputs, strict=True)))
            repository = Repository(tmp_path)
            runners = {n: repository.load(n, options=RunnerOptions(1)).runner for n in names}
            for name, x, result in zip(picks, inputs, got, strict=True):
                np.testing.assert_array_equal(result["y"], runners[name].run({"x": x})["y"])
            assert {row["state"] for row in engine.index()} == {"READY"}

    run(body())


def test_a_group_of_two_processes_serves_each_model_from_both(tmp_path: Path) -> None:
    names = make_models(tmp_path, 3, "max_batch_size: 8\nworker: {group: pair, processes: 2}\n")

    async def body() -> None:
        async with engine_on(tmp_path) as engine:
            assert len(group(engine, "pair").pids()) == 2
            assert engine.model(names[0]).devices == ("cpu", "cpu")
            for _ in range(3):
                await answers_all(engine, names * 8)

    run(body())


# -- faults ----------------------------------------------------------------------------------
def test_a_killed_shared_worker_comes_back_with_all_its_models(tmp_path: Path) -> None:
    names = make_models(tmp_path, 4)

    async def body() -> None:
        async with engine_on(tmp_path) as engine:
            shared = group(engine)
            (pid,) = shared.pids()
            os.kill(pid, signal.SIGSTOP)  # the next two batches wait in its pipe
            first = asyncio.create_task(engine.infer("m0", None, x_of(1.0)))
            second = asyncio.create_task(engine.infer("m1", None, x_of(1.0)))
            await until(lambda: sum(len(w.batches) for w in shared._live_workers()) == 2)
            os.kill(pid, signal.SIGKILL)
            # The batch it was computing fails; the one behind it was never started and
            # is computed once the process is back with every model.
            with pytest.raises(WorkerCrashedError, match="shared worker group 'default'"):
                await first
            np.testing.assert_array_equal((await second)["y"], expected("m1", 1.0))
            await until(lambda: engine.ready() and shared.pids() not in ([], [pid]), 30.0)
            await answers_all(engine, names * 4)
            text = generate_latest(engine.metrics.registry).decode()
            for name in names:
                assert f'surge_worker_restarts_total{{model="{name}"}} 1.0' in text

    run(body())


def test_a_hung_shared_worker_is_replaced_and_its_batch_retried(tmp_path: Path) -> None:
    """The hang limit comes from the model whose batch hung (its config and its estimate)."""
    names = make_models(tmp_path, 3, "max_batch_size: 1\nworker: shared\nthreads: 1\n"
                                     "hang_multiple: 5\nhang_min_ms: 300\n")

    async def body() -> None:
        async with engine_on(tmp_path) as engine:
            for _ in range(20):  # measured batches: the hang limit has an estimate
                await answers_all(engine, names)
            shared = group(engine)
            (pid,) = shared.pids()
            os.kill(pid, signal.SIGSTOP)
            task = asyncio.create_task(engine.infer("m2", None, x_of(4.0), timeout_us=20_000_000))
            await until(lambda: shared.hangs == 1, timeout=10.0)
            out = await asyncio.wait_for(task, 20.0)  # computed by the restarted process
            np.testing.assert_array_equal(out["y"], expected("m2", 4.0))
            assert pid not in shared.pids()
            # the restarted process loads the group's models one by one: m2 may answer first
            await until(engine.ready, 30.0)
            await answers_all(engine, names)

    run(body())


def test_a_model_that_fails_to_load_leaves_the_others_serving(tmp_path: Path) -> None:
    names = make_models(tmp_path, 3)
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    (tmp_path / "broken" / "config.yaml").write_text(SHARED)

    async def body() -> None:
        async with engine_on(tmp_path) as engine:
            (pid,) = group(engine).pids()
            (row,) = [r for r in engine.index() if r["name"] == "broken"]
            assert row["state"] == "UNAVAILABLE"
            assert "not a valid ONNX model" in row["reason"]
            with pytest.raises(NotFoundError):
                await engine.infer("broken", None, x_of(1.0))
            await answers_all(engine, names)
            assert group(engine).pids() == [pid]

    run(body())


# -- loading and unloading one model ---------------------------------------------------------
def test_unloading_one_model_leaves_the_others_serving_in_the_same_process(
    tmp_path: Path,
) -> None:
    names = make_models(tmp_path, 4)

    async def body() -> None:
        async with engine_on(tmp_path) as engine:
            shared = group(engine)
            (pid,) = shared.pids()
            member = engine._find("m2", None).pool
            assert isinstance(member, GroupMember)
            traffic = asyncio.gather(*(engine.infer(n, None, x_of(3.0))
                                       for n in ["m0", "m1", "m3"] * 20))
            await engine.unload("m2")
            await traffic
            assert all(member.member.id not in hosted for hosted in shared._hosted.values())
            with pytest.raises(NotFoundError):
                await engine.infer("m2", None, x_of(1.0))
            await answers_all(engine, ["m0", "m1", "m3"])
            await engine.load("m2")  # back in the same process, the others untouched
            await answers_all(engine, names)
            assert shared.pids() == [pid]
            assert shared.restarts == 0

    run(body())


def test_a_group_stops_with_its_last_model_and_starts_with_the_next(tmp_path: Path) -> None:
    make_models(tmp_path, 1)

    async def body() -> None:
        before = shm_segments()
        async with engine_on(tmp_path) as engine:
            first = group(engine)
            (pid,) = first.pids()
            await answers_all(engine, ["m0"])  # its shared-memory slots exist now
            assert shm_segments() != before
            await engine.unload("m0")
            assert "default" not in engine.groups.groups
            assert not first.pids()
            assert shm_segments() == before  # the stopped group unlinked its slots
            await engine.load("m0")
            assert group(engine).pids() != [pid]
            await answers_all(engine, ["m0"])

    run(body())


def test_models_asking_one_group_for_different_process_counts_are_refused(
    tmp_path: Path,
) -> None:
    make_models(tmp_path, 1, "worker: {group: g, processes: 1}\n", prefix="a")
    make_models(tmp_path, 1, "worker: {group: g, processes: 2}\n", prefix="b")

    async def body() -> None:
        async with engine_on(tmp_path) as engine:
            rows = {r["name"]: r for r in engine.index()}
            assert sorted(r["state"] for r in rows.values()) == ["READY", "UNAVAILABLE"]
            (refused,) = [r for r in rows.values() if r["state"] == "UNAVAILABLE"]
            assert "worker group 'g' runs" in refused["reason"]
            assert "worker.processes" in refused["reason"]

    run(body())

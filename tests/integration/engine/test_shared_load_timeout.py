"""`load_timeout_s` in a shared worker group: a load that never ends does not hold the
group's other models out of the process that runs it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import save_file
from tests.integration.engine.test_engine import run, until
from tests.integration.engine.test_shared_workers import SHARED, answers_all, group, make_models
from tests.integration.server.conftest import HERE

from surge.engine import Engine
from surge.errors import ModelLoadError
from surge.repository import Repository

pytestmark = pytest.mark.timeout(120)


def torch_member(root: Path, name: str, factory: str, kwargs: str) -> None:
    """A model of the default shared group built by tests/integration/server/models.py."""
    (root / name / "1").mkdir(parents=True)
    save_file({}, str(root / name / "1" / "model.safetensors"))
    (root / name / "config.yaml").write_text(
        f"engine: torch_factory\nfactory: models:{factory}\nfactory_kwargs: {kwargs}\n"
        "inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n"
        "outputs: [{name: output, datatype: FP32, shape: [-1, 4]}]\n"
        f"{SHARED}load_timeout_s: 10\n")


def test_a_load_that_timed_out_does_not_hold_the_groups_next_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process went on loading the dropped model for its whole minute, and every load or
    batch of the group's other models waited behind it."""
    monkeypatch.syspath_prepend(str(HERE))  # the group's process imports models:slow_to_load
    names = make_models(tmp_path, 2)
    torch_member(tmp_path, "late", "slow_to_load", "{load_s: 60}")

    async def body() -> None:
        engine = Engine(Repository(tmp_path), models=["m0"])
        await engine.start()
        try:
            (pid,) = group(engine).pids()
            with pytest.raises(ModelLoadError, match=r"within 10 s \(load_timeout_s\)"):
                await engine.load("late")
            await asyncio.wait_for(engine.load("m1"), 20.0)
            await asyncio.wait_for(answers_all(engine, names), 20.0)
            assert pid not in group(engine).pids()  # restarted, not left loading
        finally:
            await engine.stop(grace_s=5.0)

    run(body())


def test_a_reload_that_never_ends_is_given_up_there_and_the_others_come_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted process reloads its models one by one: one whose reload hung kept those
    after it out for good."""
    monkeypatch.syspath_prepend(str(HERE))
    marker = tmp_path / "stall"
    torch_member(tmp_path, "flaky", "stalls_when", f"{{marker: '{marker}'}}")
    names = make_models(tmp_path, 1)

    async def body() -> None:
        engine = Engine(Repository(tmp_path), models=["flaky"])
        await engine.start()
        try:
            await engine.load("m0")  # after flaky: the restarted process reloads flaky first
            shared = group(engine)
            (pid,) = shared.pids()
            marker.touch()
            os.kill(pid, signal.SIGKILL)
            await until(lambda: shared.restarts >= 2, 40.0)  # killed once more, reloading
            await until(lambda: engine.model_ready("m0"), 20.0)
            await asyncio.wait_for(answers_all(engine, names), 20.0)
            assert not engine.model_ready("flaky")  # not loaded there again
        finally:
            await engine.stop(grace_s=5.0)

    run(body())

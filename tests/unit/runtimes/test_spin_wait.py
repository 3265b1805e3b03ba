"""A served model's engine threads sleep when idle unless its config asks them to spin."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from surge.engine import Engine, ServedModel
from surge.repository import Repository
from surge.runtimes import RunnerOptions
from surge.runtimes.onnx_runner import OnnxRunner

SPIN = "session.intra_op.allow_spinning"


def _entry(runner: OnnxRunner) -> str:
    return str(runner._session.get_session_options().get_session_config_entry(SPIN))


@pytest.mark.parametrize(("spin", "expected"), [(True, "1"), (False, "0")])
def test_runner_options_set_onnx_runtime_spinning(example_repo: Path, spin: bool,
                                                  expected: str) -> None:
    runner = OnnxRunner(example_repo / "fashion" / "1" / "model.onnx",
                        RunnerOptions(intra_op_threads=1, spin_wait=spin))
    assert _entry(runner) == expected


@pytest.mark.parametrize("spin", [True, False])
def test_the_model_config_decides_for_the_repository_and_the_workers(
        example_repo: Path, tmp_path: Path, spin: bool) -> None:
    shutil.copytree(example_repo / "fashion", tmp_path / "fashion")
    config = tmp_path / "fashion" / "config.yaml"
    config.write_text(config.read_text() + f"spin_wait: {str(spin).lower()}\n")
    loaded = Repository(tmp_path).load("fashion")
    inner = getattr(loaded.runner, "_inner", loaded.runner)
    assert isinstance(inner, OnnxRunner)
    assert _entry(inner) == ("1" if spin else "0")
    # The workers get it from the front end's copy of the config, in what each is told to load.
    async def specs() -> list[bool]:  # a served model is built inside the server's event loop
        served = ServedModel(Engine(Repository(tmp_path)), "fashion", 1, (1,), loaded.config, None)
        return [served.pool.spec(i).spin_wait for i in range(len(served.pool.placements))]

    assert set(asyncio.run(specs())) == {spin}

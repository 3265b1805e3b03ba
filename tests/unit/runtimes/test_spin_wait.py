"""A served model's engine threads sleep when idle unless its config asks them to spin, always
or only while a batch computes (`spin_wait: run`)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from surge.engine import Engine, ServedModel
from surge.errors import ConfigError
from surge.repository import Repository
from surge.repository.config import parse_config
from surge.runtimes import RunnerOptions
from surge.runtimes.base import SpinWait, openmp_wait_policy
from surge.runtimes.onnx_runner import OnnxRunner

SPIN = "session.intra_op.allow_spinning"
STOP = "session.force_spinning_stop"


def _entry(runner: OnnxRunner, key: str = SPIN) -> str:
    return str(runner._session.get_session_options().get_session_config_entry(key))


def _stops(runner: OnnxRunner) -> bool:
    try:
        return _entry(runner, STOP) == "1"
    except Exception:  # ONNX Runtime raises for an entry never set
        return False


@pytest.mark.parametrize(("spin", "expected", "stops"),
                         [(True, "1", False), (False, "0", False), ("run", "1", True)])
def test_runner_options_set_onnx_runtime_spinning(example_repo: Path, spin: SpinWait,
                                                  expected: str, stops: bool) -> None:
    runner = OnnxRunner(example_repo / "fashion" / "1" / "model.onnx",
                        RunnerOptions(intra_op_threads=1, spin_wait=spin))
    assert _entry(runner) == expected
    assert _stops(runner) is stops


@pytest.mark.parametrize(("spin", "text"), [(True, "true"), (False, "false"), ("run", "run")])
def test_the_model_config_decides_for_the_repository_and_the_workers(
        example_repo: Path, tmp_path: Path, spin: SpinWait, text: str) -> None:
    shutil.copytree(example_repo / "fashion", tmp_path / "fashion")
    config = tmp_path / "fashion" / "config.yaml"
    config.write_text(config.read_text() + f"spin_wait: {text}\n")
    loaded = Repository(tmp_path).load("fashion")
    inner = getattr(loaded.runner, "_inner", loaded.runner)
    assert isinstance(inner, OnnxRunner)
    assert _entry(inner) == ("1" if spin else "0")
    assert _stops(inner) is (spin == "run")
    # The workers get it from the front end's copy of the config, in what each is told to load.
    async def specs() -> list[SpinWait]:  # a served model is built inside the server's event loop
        served = ServedModel(Engine(Repository(tmp_path)), "fashion", 1, (1,), loaded.config, None)
        return [served.pool.spec(i).spin_wait for i in range(len(served.pool.placements))]

    assert set(asyncio.run(specs())) == {spin}


def test_openmp_spins_only_when_asked_to_spin_always() -> None:
    # OpenMP cannot stop spinning when a run returns: "run" leaves its threads passive.
    assert [openmp_wait_policy(s) for s in (True, False, "run")] == ["ACTIVE", "PASSIVE", "PASSIVE"]


def test_an_unknown_spin_wait_is_a_config_error_naming_the_field() -> None:
    assert parse_config({"spin_wait": "run"}, "config.yaml").spin_wait == "run"
    with pytest.raises(ConfigError, match="spin_wait"):
        parse_config({"spin_wait": "sometimes"}, "config.yaml")

"""`surge train` checks the recipe before any process starts, and builds torchrun's command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import surge.train.launcher as launch_module
from surge.cli import main
from surge.errors import ConfigError
from surge.train.config import PipelineConfig, parse_train_config
from surge.train.launcher import LaunchOptions, torchrun_command, validate
from surge.train.parallel import balanced_split, resolve_split
from tests.unit.train.tiny import recipe, tiny_mlp, write_recipe


@pytest.mark.parametrize(("args", "message"), [
    (["learning_rate=0.1"], "unknown key 'learning_rate'"),
    (["batch_size=4", "parallelism=ddp", "--nproc", "8"],
     "8 processes but batch_size 4: each process needs at least one sample"),
    (["parallelism=pipeline", "pipeline.split_points=[nope]", "--nproc", "2"],
     "the model has no module 'nope'"),
    (["parallelism=pipeline", "pipeline.split_points=['1', '3']", "--nproc", "2"],
     "lists 2 points, but 2 processes make 2 stages and need 1"),
    (["parallelism=pipeline", "--nproc", "1"], "pipeline needs at least 2 processes"),
    (["parallelism=pipeline", "pipeline.microbatches=5", "--nproc", "2"],
     "does not split into pipeline.microbatches 5"),
    (["precision=fp16"], "fp16 needs a CUDA device"),
    (["--nproc", "2"], "parallelism none runs one process"),
    (["model.builder=tests.unit.train.tiny:missing"], "model.builder: factory"),
])
def test_bad_config_fails_in_one_line_before_any_process_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_processes: list[object],
    args: list[str], message: str,
) -> None:
    if "fp16" in message and __import__("torch").cuda.is_available():
        pytest.skip("fp16 is valid where CUDA is present")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_recipe(tmp_path)), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert no_processes == []
    assert not (tmp_path / "run").exists()


def test_a_valid_multi_process_recipe_starts_torchrun_with_the_resolved_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands: list[list[str]] = []

    def fake_run(command: list[str], diverged: Path | None = None) -> int:
        commands.append(command)
        return 0

    monkeypatch.setattr(launch_module, "run_torchrun", fake_run)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_recipe(tmp_path)), "parallelism=ddp", "epochs=3",
              "--nproc", "2", "--max-restarts", "1"])
    assert exit_info.value.code == 0
    (command,) = commands
    assert command[:3] == [sys.executable, "-m", "surge.train.agent"]
    assert "--nproc-per-node=2" in command
    assert "--max-restarts=1" in command
    resolved = Path(command[command.index("surge.train.rank") + 1])
    assert "epochs: 3" in resolved.read_text()


def test_torchrun_commands_for_one_and_many_machines(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    single = torchrun_command(config, LaunchOptions(nproc=2, resume=True))
    assert "--standalone" in single
    assert single[-1] == "--resume"
    static = torchrun_command(config, LaunchOptions(nproc=2, nnodes=2, node_rank=1,
                                                    rdzv="10.0.0.1:29500"))
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1",
            "--master-port=29500"} <= set(static)
    dynamic = torchrun_command(config, LaunchOptions(nproc=2, nnodes=2, rdzv="head:29400"))
    assert {"--rdzv-backend=c10d", "--rdzv-endpoint=head:29400"} <= set(dynamic)


@pytest.mark.parametrize(("changes", "message"), [
    ({"nnodes": 2}, "--nnodes > 1 needs --rdzv"),
    ({"nnodes": 2, "rdzv": "nohostport"}, "--rdzv 'nohostport' must look like host:port"),
    ({"nnodes": 2, "node_rank": 2, "rdzv": "h:1"}, "--node-rank 2 must be in [0, 2)"),
    ({"nproc": 0}, "--nproc 0 and --nnodes 1 must be >= 1"),
    ({"nnodes": -1}, "--nproc 1 and --nnodes -1 must be >= 1"),
    ({"max_restarts": -1}, "--max-restarts -1 must be >= 0"),
    ({"nproc": True}, "--nproc True: give a whole number (an int)"),
    ({"nproc": 2.0}, "--nproc 2.0: give a whole number (an int)"),
    ({"nnodes": "2"}, "--nnodes '2': give a whole number (an int)"),
    ({"max_restarts": "1"}, "--max-restarts '1': give a whole number (an int)"),
    ({"nnodes": 2, "node_rank": 1.0, "rdzv": "h:1"}, "--node-rank 1.0: give a whole number"),
    ({"rdzv": 29400}, "--rdzv 29400: give host:port as a str"),
    ({"resume": "yes"}, "resume 'yes': give True or False"),
    ({"join_timeout_s": 0}, "--join-timeout 0: give the seconds every machine has to join"),
    ({"join_timeout_s": -5.0}, "--join-timeout -5: give the seconds"),
    ({"join_timeout_s": float("inf")}, "--join-timeout inf: give the seconds"),
    ({"join_timeout_s": float("nan")}, "--join-timeout nan: give the seconds"),
    ({"join_timeout_s": True}, "--join-timeout True: give the seconds"),
    ({"join_timeout_s": "60"}, "--join-timeout '60': give the seconds"),
])
def test_launch_options_are_checked_where_they_are_built(
        changes: dict[str, object], message: str) -> None:
    """`LaunchOptions(nproc=0)` was accepted until the run started, and `nproc=True` (read as
    1) or `max_restarts="1"` not refused at all: now building it raises, in one line."""
    with pytest.raises(ConfigError) as info:
        LaunchOptions(**changes)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_launch_options_take_numpy_counts_and_any_positive_timeout() -> None:
    import numpy as np

    options = LaunchOptions(nproc=np.int64(2), join_timeout_s=0.5)  # type: ignore[arg-type]
    assert options.world_size == 2
    assert "--rdzv-conf=join_timeout=1" in torchrun_command(  # whole seconds, rounded up
        Path("c.yaml"), LaunchOptions(nnodes=2, rdzv="h:1", join_timeout_s=0.5))


def test_an_unresolvable_rendezvous_host_is_refused_by_validate(tmp_path: Path) -> None:
    # A network lookup: done when the run is validated, not when the options are built.
    options = LaunchOptions(nnodes=2, rdzv="no-such-host.invalid:29400")
    config = parse_train_config(recipe(tmp_path, parallelism="ddp"), "r")
    with pytest.raises(ConfigError) as info:
        validate(config, options)
    assert ("--rdzv no-such-host.invalid:29400: the host 'no-such-host.invalid' does not "
            "resolve") in str(info.value)


@pytest.mark.parametrize(("args", "message"), [
    (["--nproc", "0"], "--nproc 0 and --nnodes 1 must be >= 1"),
    (["--join-timeout", "0"], "--join-timeout 0: give the seconds every machine has to join"),
    (["--join-timeout", "inf"], "--join-timeout inf: give the seconds"),
    (["--nnodes", "2", "--rdzv", "h:1", "--node-rank", "3"], "--node-rank 3 must be in [0, 2)"),
])
def test_bad_launch_options_on_the_command_line_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_processes: list[object],
    args: list[str], message: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_recipe(tmp_path, parallelism="ddp")), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert no_processes == []


def test_the_join_timeout_goes_to_either_rendezvous(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    dynamic = torchrun_command(config, LaunchOptions(nproc=2, nnodes=2, rdzv="head:29400",
                                                     join_timeout_s=30))
    assert "--rdzv-conf=join_timeout=30" in dynamic
    static = torchrun_command(config, LaunchOptions(nnodes=2, node_rank=0, rdzv="head:29500"))
    assert "--rdzv-conf=timeout=600" in static  # the default: torchrun's c10d join_timeout
    assert not any(arg.startswith("--rdzv-conf") for arg in
                   torchrun_command(config, LaunchOptions(nproc=2)))


def test_more_cpu_processes_than_cores_are_allowed_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(launch_module, "available_cores", lambda: 2)
    config = parse_train_config(recipe(tmp_path, parallelism="ddp"), "r")
    validate(config, LaunchOptions(nproc=2))
    assert capsys.readouterr().err == ""
    validate(config, LaunchOptions(nproc=4))
    assert "warning: --nproc 4 on 2 available core(s)" in capsys.readouterr().err


def test_balanced_split_starts_stages_where_parameter_counts_balance() -> None:
    model = tiny_mlp(features=8, hidden=64)  # Linear 576, 4160 (heaviest), 260 parameters
    assert balanced_split(model, 2) == ["3"]
    assert balanced_split(model, 3) == ["3", "4"]
    assert resolve_split(model, PipelineConfig(split_points=["5"]), 2) == ["5"]


def test_residual_blocks_are_not_cut() -> None:
    from surge.zoo.resnet import resnet18

    model = resnet18(classes=10, in_channels=1, width=8)
    assert resolve_split(model, PipelineConfig(split_points=["layers.4"]), 2) == ["layers.4"]
    with pytest.raises(ConfigError, match="'layers.4.conv1' is inside a block that cannot be cut"):
        resolve_split(model, PipelineConfig(split_points=["layers.4.conv1"]), 2)
    with pytest.raises(ConfigError, match="leaves the first stage empty"):
        resolve_split(model, PipelineConfig(split_points=["stem"]), 2)


def test_split_points_must_be_in_call_order() -> None:
    with pytest.raises(ConfigError, match="distinct and in call order"):
        resolve_split(tiny_mlp(), PipelineConfig(split_points=["5", "3"]), 3)


def test_torchrun_is_a_module_of_this_torch() -> None:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert "--nproc-per-node" in done.stdout


def test_more_processes_than_gpus_is_refused_before_any_process_starts() -> None:
    from surge.train.launcher import _check_gpus_per_process

    with pytest.raises(ConfigError, match=r"--nproc 2: this machine has 1 CUDA device"):
        _check_gpus_per_process(__import__("torch").device("cuda", 0), 2, 1)
    _check_gpus_per_process(__import__("torch").device("cuda", 0), 2, 2)
    _check_gpus_per_process(__import__("torch").device("cpu"), 2, 0)


FAKE_TORCHRUN = """
import pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    (folder / "stopped").write_text("ranks stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(folder / "ready").write_text("")
time.sleep(60)
"""

LAUNCHER = """
import sys
from surge.commands import exit_on_sigterm
from surge.train.launcher import run_torchrun
with exit_on_sigterm():
    run_torchrun([sys.executable, "-c", sys.argv[1], sys.argv[2]])
"""


def test_a_stopped_train_stops_torchrun_rather_than_orphan_it(tmp_path: Path) -> None:
    """SIGTERM to `surge train --nproc 2` killed only surge: torchrun and its ranks went on
    training (and would have exported) with no parent. Now torchrun is sent SIGTERM, which it
    passes to its ranks, and waited for."""
    import signal
    import time

    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, FAKE_TORCHRUN, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists() and launcher.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "ready").exists(), "the fake torchrun did not start"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert (tmp_path / "stopped").read_text() == "ranks stopped"

"""Bad input to the CLI: one line naming the bad value, exit code 2, never a traceback and never
something else done instead (an empty path taken as the current folder, a server started with
nothing to serve)."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from surge.errors import SurgeError
from tests.cli_runner import run_cli


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of `surge ARGS`, checked to be one `error:` line with exit code 2."""
    code, out, err = run_cli(args, capsys)
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    return lines[0]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The repositories `surge serve` went on to serve (the server itself is not started)."""
    import surge.api

    repos: list[Path] = []
    monkeypatch.setattr(surge.api, "serve", lambda repo, *_a, **_k: repos.append(repo))
    return repos


# -- typer's own range and type checks --------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["serve", "r", "--http-port", "-1"], "--http-port '-1': must be at least 0"),
    (["serve", "r", "--metrics-port", "70000"], "--metrics-port '70000': must be at most 65535"),
    (["serve", "r", "--grpc-port", "abc"], "--grpc-port 'abc': must be a whole number"),
    (["serve", "r", "--grace", "-5"], "--grace '-5': must be at least 0.0"),
    (["serve", "r", "--access-log-sample", "2"], "--access-log-sample '2': must be at most 1.0"),
    (["serve", "r", "--idle-timeout", "soon"], "--idle-timeout 'soon': must be a number"),
    (["serve", "r", "--max-connections", "0"], "--max-connections '0': must be at least 1"),
    (["evaluate", "r", "--model", "m", "--data", "d", "--samples", "0"],
     "--samples '0': must be at least 1"),
    (["serve", "r", "--max-body-mb", "inf"], "--max-body-mb inf: give a finite size in MiB"),
])
def test_range_and_type_errors_are_one_line_naming_the_option_and_value(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert one_line_error(args, capsys) == f"error: {message}"


def test_usage_errors_are_one_line_pointing_to_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["serve"], capsys)
    assert "missing argument 'repo'" in line.lower()
    assert "surge serve --help" in line
    line = one_line_error(["serve", "r", "--no-such-option"], capsys)
    assert "--no-such-option" in line
    assert "surge serve --help" in line
    assert "no such command 'nope'" in one_line_error(["nope"], capsys).lower()


def test_help_still_prints_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["serve", "--help"], capsys)
    assert code == 0
    assert "--http-port" in out
    code, out, err = run_cli([], capsys)  # no command: the help, as before
    assert code == 2
    assert "serve" in out + err
    assert "error:" not in out + err


# -- an empty path is refused, not taken as the current folder ------------------------------

@pytest.mark.parametrize(("args", "name"), [
    (["models", ""], "REPO"),
    (["inspect", ""], "PATH"),
    (["serve", "", "--tls-cert", "c"], "REPO"),  # without the fix: --tls-cert needs --tls-key
    (["serve", "r", "--endpoints-file", ""], "--endpoints-file"),
    (["serve", "r", "--api-keys-file", ""], "--api-keys-file"),
    (["predict", "", "--model", "m", "--input", "x.npy"], "REPO"),
    (["predict", "r", "--model", "m", "--input", "x.npy", "--output", ""], "--output"),
    (["evaluate", "", "--model", "m", "--data", "d"], "REPO"),
    (["tune", ""], "REPO"),
    (["report", ""], "REPO"),
])
def test_an_empty_path_is_refused_naming_the_argument(
        args: list[str], name: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(args, capsys)
    assert line.startswith(f"error: {name} '': an empty path")


def test_every_path_parameter_of_the_cli_refuses_an_empty_path() -> None:
    """Plugins' commands included: the check is added to the built command tree."""
    import typer.main

    from surge.cli import build_app, refuse_empty_paths

    command = typer.main.get_command(build_app())
    refuse_empty_paths(command)
    paths = list(_path_parameters(command))
    assert len(paths) > 10
    for param in paths:
        with pytest.raises(SurgeError, match="an empty path"):
            param.process_value(None, "")  # type: ignore[arg-type]


def _path_parameters(command: object) -> list[object]:
    found = [p for p in getattr(command, "params", [])
             if getattr(getattr(p, "type_descriptor", None), "is_path", False)]
    for sub in getattr(command, "commands", {}).values():
        found += _path_parameters(sub)
    return found


# -- serve: a repository with nothing to serve, a budget for a group nothing runs in --------

@pytest.mark.parametrize("folders", [[], ["junk", "docs/sub"]])
def test_serve_refuses_a_repository_without_a_model(
        tmp_path: Path, folders: list[str], started: list[Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    for folder in folders:
        (tmp_path / folder).mkdir(parents=True)
    line = one_line_error(["serve", str(tmp_path)], capsys)
    assert f"error: {tmp_path}: no model to serve" in line
    assert "config.yaml" in line
    assert started == []


@pytest.mark.parametrize("mode", [["--model-control", "poll"], ["--poll-interval", "1"],
                                  ["--model-control", "explicit"]])
def test_serve_starts_an_empty_repository_when_models_may_be_added_while_serving(
        tmp_path: Path, mode: list[str], started: list[Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["serve", str(tmp_path), *mode], capsys)
    assert code == 0, err
    assert started == [tmp_path]


@pytest.mark.parametrize("layout", ["m/config.yaml", "m/1/model.onnx", "m/variants/int8/variant.yaml"])
def test_serve_goes_on_with_a_model_folder(tmp_path: Path, layout: str, started: list[Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / layout).parent.mkdir(parents=True)
    (tmp_path / layout).write_text("")
    code, _, err = run_cli(["serve", str(tmp_path)], capsys)
    assert code == 0, err
    assert started == [tmp_path]


def _grouped_repo(root: Path) -> Path:
    for name, worker in (("a", "shared"), ("b", "{group: big}"), ("c", "dedicated")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.yaml").write_text(f"worker: {worker}\n")
    return root


def test_serve_refuses_a_budget_for_a_group_no_model_runs_in(
        tmp_path: Path, started: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    repo = _grouped_repo(tmp_path)
    line = one_line_error(["serve", str(repo), "--group-memory-budget", "big=1GB",
                           "--group-memory-budget", "bgi=1GB"], capsys)
    assert "--group-memory-budget bgi=1GB" in line
    assert "no model of the repository runs in worker group 'bgi'" in line
    assert "groups: big, default" in line
    assert started == []


def test_serve_names_no_group_when_no_model_shares_workers(
        tmp_path: Path, started: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    line = one_line_error(["serve", str(tmp_path), "--group-memory-budget", "shared=1GB"], capsys)
    assert "worker group 'shared'" in line
    assert "none runs in a worker group" in line


def test_serve_accepts_budgets_for_the_groups_models_run_in(
        tmp_path: Path, started: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    repo = _grouped_repo(tmp_path)
    code, _, err = run_cli(["serve", str(repo), "--group-memory-budget", "big=1GB",
                            "--group-memory-budget", "default=500MB"], capsys)
    assert code == 0, err
    assert started == [repo]


# -- inspect: a .keras file that is not a zip archive ---------------------------------------

def test_inspect_says_a_keras_file_that_is_not_a_zip_is_not_a_keras_archive(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "x.keras"
    fake.write_text("not a model\n")
    line = one_line_error(["inspect", str(fake)], capsys)
    assert line == f"error: {fake}: not a Keras zip archive (a .keras file is the zip that " \
                   "model.save() writes)"
    assert "not found" not in line.lower()


def test_inspect_still_hands_a_zip_keras_file_to_keras(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("keras")
    archive = tmp_path / "y.keras"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("metadata.json", "{}")
    line = one_line_error(["inspect", str(archive)], capsys)
    assert "Keras cannot load it" in line
    assert "not a Keras zip archive" not in line


# -- SIGTERM: the offline commands unwind instead of dying where they stand ---------------------

class _TerminatedError(Exception):
    """What this test's own SIGTERM handler raises where no command handles the signal."""


@pytest.fixture
def sigterm_guard() -> Iterator[object]:
    """A SIGTERM handler of the test's own, so that a command that does not handle SIGTERM
    fails the test instead of killing pytest; restored afterwards."""
    import signal

    def guard(signum: int, frame: object) -> None:
        raise _TerminatedError

    previous = signal.signal(signal.SIGTERM, guard)
    yield guard
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(("api", "args"), [
    ("optimize", ["optimize", "repo", "--model", "m", "--variants", "int8-dynamic"]),
    ("tune", ["tune", ".", "--model", "m", "--data", "d", "--no-write"]),
    ("train", ["train", "recipe.yaml", "--nproc", "2"]),
])
def test_sigterm_ends_an_offline_command_by_unwinding_it(
        api: str, args: list[str], sigterm_guard: object, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM killed these on the spot: `surge tune` left its staged repositories (hard links
    to the model files) in /tmp, `surge optimize` its work folder in variants/, and `surge
    train --nproc N` left torchrun and its ranks training, orphaned. Now it raises SystemExit
    (143) where the command is, so its `finally` blocks and temporary folders clean up."""
    import os
    import signal
    import tempfile

    import surge.api

    def work(*_a: object, **_k: object) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path, prefix="staged-"):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between these
                time.sleep(0.05)
        raise AssertionError("SIGTERM did not stop the command")

    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(surge.api, api, work)
    code, _, _ = run_cli(args, capsys)
    assert code == 128 + signal.SIGTERM
    assert not list(tmp_path.glob("staged-*"))
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard  # handed back


@pytest.mark.parametrize("command", [
    ["predict", "--input", "x.npy"], ["evaluate", "--data", "d.npz"],
    ["optimize", "--variants", "int8-dynamic"],
])
def test_a_pipeline_where_one_model_is_needed_says_it_is_a_pipeline(
        command: list[str], example_repo: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It said "model 'boxes' has no servable version", as if its files were missing."""
    import shutil

    import numpy as np

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(example_repo / "detector-boxes", repo / "boxes")
    monkeypatch_free_cwd = tmp_path
    np.savez(monkeypatch_free_cwd / "d.npz", image=np.zeros((2, 4), np.float32))
    np.save(monkeypatch_free_cwd / "x.npy", np.zeros((2, 4), np.float32))
    command = [str(tmp_path / c) if c.endswith((".npz", ".npy")) else c for c in command]
    name, *options = command
    line = one_line_error([name, str(repo), "--model", "boxes", *options], capsys)
    assert line == "error: model 'boxes' is a pipeline: `surge serve` runs it; name one of its " \
                   "steps' models to load, optimize or evaluate it alone"
    assert sorted(p.name for p in (repo / "boxes").iterdir()) == ["config.yaml"]

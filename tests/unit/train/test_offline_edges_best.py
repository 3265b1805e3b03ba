"""A run's best.safetensors, damaged or missing, is refused in one line naming it: at the start
of a resumed run (which would export it once trained), and at the export itself."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from surge.cli import main
from surge.errors import ConfigError
from surge.train.config import parse_train_config
from surge.train.distributed import DistState
from surge.train.recipe import Recipe, run
from tests.unit.train.tiny import recipe, write_recipe

UNSAVED = {"export.repo": None}


def _config(tmp: Path, **changes: Any) -> Any:
    return parse_train_config(recipe(tmp, **changes), "r")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run, not exported: its log and checkpoint folder."""
    tmp = tmp_path_factory.mktemp("finished")
    run(_config(tmp, epochs=1, **UNSAVED))
    return tmp / "run"


def _damage(file: Path, how: str) -> None:
    if how == "zero bytes":
        file.write_bytes(b"")
    elif how == "truncated":
        file.write_bytes(file.read_bytes()[:99])
    elif how == "random bytes":
        file.write_bytes(bytes(range(256)) * 4)
    elif how == "another model's weights":
        save_file({"1.weight": torch.zeros(3, 3)}, str(file))


def _resume_from_cli(tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = write_recipe(tmp, epochs=1)
    with pytest.raises(SystemExit) as ended:
        main(["train", str(path), "--resume"])
    return int(ended.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("how", "message"), [
    ("zero bytes", "epoch-0001/best.safetensors cannot be read (SafetensorError"),
    ("truncated", "epoch-0001/best.safetensors cannot be read (SafetensorError"),
    ("random bytes", "epoch-0001/best.safetensors cannot be read (SafetensorError"),
    ("another model's weights", "epoch-0001/best.safetensors holds weights of another model "
                                "than"),
])
def test_a_damaged_best_file_stops_a_resumed_run_in_one_line(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str], how: str,
    message: str,
) -> None:
    """Resumed at its last epoch, the run goes straight to the export: it was a traceback
    from safetensors (or torch's load_state_dict) there."""
    shutil.copytree(finished_run, tmp_path / "run")
    ckpt = tmp_path / "run" / "ckpt"
    _damage(ckpt / "epoch-0001" / "best.safetensors", how)
    (ckpt / "best.safetensors").unlink()
    code, err = _resume_from_cli(tmp_path, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert f"remove {ckpt / 'latest.json'}" in " ".join(err.split())
    assert not (tmp_path / "repo" / "tiny").exists()


def test_a_checkpoint_without_its_best_file_is_refused_before_training(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(finished_run, tmp_path / "run")
    ckpt = tmp_path / "run" / "ckpt"
    (ckpt / "epoch-0001" / "best.safetensors").unlink()
    (ckpt / "best.safetensors").unlink()
    code, err = _resume_from_cli(tmp_path, capsys)
    assert code == 2
    assert "records best epoch 1, but there is no best.safetensors" in " ".join(err.split())
    assert "Traceback" not in err


def test_the_export_names_a_best_file_it_cannot_read(tmp_path: Path) -> None:
    """Damaged after the run kept it (a full disk, another process): a traceback at the
    export, now one line naming the file."""
    trained = Recipe(_config(tmp_path, epochs=1), DistState())
    trained.run()
    best = tmp_path / "run" / "ckpt" / "best.safetensors"
    best.write_bytes(b"")
    with pytest.raises(ConfigError) as refused:
        trained.export()
    assert f"checkpoint file {best} cannot be read" in str(refused.value)
    assert "\n" not in str(refused.value)


NOT_WRITABLE = Path("/proc/surge-no-such-folder")  # root may write anywhere but here


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("key", ["log_dir", "checkpoint.dir"])
def test_a_run_folder_that_cannot_be_written_is_refused_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
    path = write_recipe(tmp_path, **{key: str(NOT_WRITABLE / "run")})
    with pytest.raises(SystemExit) as ended:
        main(["train", str(path)])
    err = " ".join(capsys.readouterr().err.split())
    assert ended.value.code == 2
    assert f"error: {key} '{NOT_WRITABLE / 'run'}' cannot be written" in err
    assert "Traceback" not in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_export_that_cannot_be_written_keeps_the_weights_and_says_how_to_export(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole run trained, then the export was a traceback."""
    path = write_recipe(tmp_path, epochs=1, **{"export.repo": str(NOT_WRITABLE)})
    with pytest.raises(SystemExit) as ended:
        main(["train", str(path)])
    err = " ".join(capsys.readouterr().err.split())
    assert ended.value.code == 2
    best = tmp_path / "run" / "ckpt" / "best.safetensors"
    assert (f"error: cannot export into export.repo {NOT_WRITABLE} (No such file or "
            f"directory); the trained weights are kept in {best}") in err
    assert "run again with --resume" in err
    assert best.is_file()


@pytest.mark.parametrize(("key", "where"), [
    ("checkpoint.dir", "repo"),  # the epochs listed as models
    ("log_dir", "repo/tiny/1"),  # a version folder without a model file
])
def test_run_folders_inside_the_export_repository_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, where: str) -> None:
    path = write_recipe(tmp_path, **{key: str(tmp_path / where)})
    with pytest.raises(SystemExit) as ended:
        main(["train", str(path)])
    err = " ".join(capsys.readouterr().err.split())
    assert ended.value.code == 2
    assert (f"error: {key} '{tmp_path / where}' lies in export.repo '{tmp_path / 'repo'}', "
            "which would list the run's files as models") in err
    assert not (tmp_path / "repo").exists()


def test_a_pointer_that_cannot_be_read_is_named(
        tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unreadable, or removed between the look and the read: a traceback before."""
    from surge.train.checkpoint import latest_checkpoint

    shutil.copytree(finished_run, tmp_path / "run")
    pointer = tmp_path / "run" / "ckpt" / "latest.json"
    read_text = Path.read_text

    def denied(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == pointer:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError) as refused:
        latest_checkpoint(pointer.parent)
    assert str(refused.value).startswith(f"{pointer} is not a checkpoint pointer "
                                         "(PermissionError: [Errno 13] Permission denied")


@pytest.mark.parametrize("key", ["log_dir", "checkpoint.dir", "export.repo"])
def test_a_run_folder_behind_a_symlink_loop_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
    """Python 3.11 resolves a symlink loop with a RuntimeError: a traceback before."""
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    path = write_recipe(tmp_path, **{key: str(loop / "run")})
    with pytest.raises(SystemExit) as ended:
        main(["train", str(path)])
    err = " ".join(capsys.readouterr().err.split())
    assert ended.value.code == 2
    assert err.startswith(f"error: {key} '{loop / 'run'}': a symlink loop")

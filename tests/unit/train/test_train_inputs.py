"""Bad paths and values in a recipe are refused in one line before anything trains, and an
export never silently replaces a model version that is already there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from surge.cli import main
from surge.errors import ConfigError
from surge.tasks import DataOptions, Split
from surge.tasks.data import SyntheticDataset
from surge.train.config import parse_train_config
from surge.train.distributed import DistState
from surge.train.launcher import LaunchOptions, validate
from surge.train.publish import publish
from surge.train.recipe import Recipe, run
from tests.unit.train.tiny import FEATURES, recipe, tiny_mlp, write_recipe


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `surge train ARGS`; it must exit 2 with one line, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(("args", "message"), [
    (["checkpoint.dir={file}"], "checkpoint.dir '{file}': not a directory"),
    (["checkpoint.dir={file}/sub"], "not a directory ({file} is a file)"),
    (["export.repo={file}"], "export.repo '{file}': not a directory"),
    (["log_dir={file}"], "log_dir '{file}': not a directory"),
    (["export.repo="], "export.repo: Value error, must name a directory, not be empty"),
    (["checkpoint.dir="], "checkpoint.dir: Value error, must name a directory, not be empty"),
    (["optimizer.lr=.inf"], "optimizer.lr: Input should be a finite number (got inf)"),
    (["optimizer.weight_decay=.inf"], "optimizer.weight_decay: Input should be a finite number"),
    (["--resume"], "--resume: no checkpoint in checkpoint.dir"),
])
def test_bad_paths_and_values_are_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_processes: list[object],
    args: list[str], message: str,
) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory\n")
    err = _refused([str(write_recipe(tmp_path)), *(a.format(file=file) for a in args)], capsys)
    assert message.format(file=file) in err
    assert no_processes == []
    assert not (tmp_path / "run").exists()
    assert file.read_text() == "not a directory\n"


@pytest.mark.parametrize(("kwargs", "message"), [
    ("model.kwargs.nosuch=1", "TypeError: tiny_mlp() got an unexpected keyword argument"),
    ("model.kwargs.hidden=-3", "RuntimeError: Trying to create tensor with negative dimension"),
])
def test_model_kwargs_its_builder_refuses_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_processes: list[object],
    kwargs: str, message: str,
) -> None:
    """The builder's own exception escaped as a traceback (exit 1)."""
    err = _refused([str(write_recipe(tmp_path)), kwargs], capsys)
    assert err.startswith("error: model.builder 'tests.unit.train.tiny:tiny_mlp' with "
                          "model.kwargs {"), err
    assert message in err
    assert no_processes == []


def test_a_directory_as_config_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    err = _refused([str(tmp_path)], capsys)
    assert f"{tmp_path}: is a directory" in err


def _existing_version(tmp_path: Path, name: str = "tiny") -> Path:
    version = tmp_path / "repo" / name / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"the committed model")
    return version


@pytest.mark.parametrize("name", ["tiny", "tiny-torch"])
def test_an_existing_version_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_processes: list[object],
    name: str,
) -> None:
    version = _existing_version(tmp_path, name)
    err = _refused([str(write_recipe(tmp_path)), "export.version=1",
                    "export.torch_name=tiny-torch"], capsys)
    assert f"{version} already holds a model; pass export.overwrite=true" in err
    assert not (tmp_path / "run").exists()
    assert (version / "model.onnx").read_bytes() == b"the committed model"


def test_overwrite_a_new_version_or_the_next_free_one_is_accepted(tmp_path: Path) -> None:
    _existing_version(tmp_path)
    (tmp_path / "repo" / "tiny" / "2").mkdir()  # an empty version directory holds no model
    for changes in ({"export.version": 1, "export.overwrite": True}, {"export.version": 2},
                    {"export.version": 3}, {}):
        validate(parse_train_config(recipe(tmp_path, **changes), "r"), LaunchOptions())


def test_a_version_that_appears_while_training_is_not_replaced(tmp_path: Path) -> None:
    version = _existing_version(tmp_path)
    config = parse_train_config(recipe(tmp_path, **{"export.version": 1}), "r")
    with pytest.raises(ConfigError, match="already holds a model"):
        publish(tiny_mlp(), config, {"accuracy": 0.5}, torch.zeros(2, FEATURES))
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx"]
    assert not (tmp_path / "repo" / "tiny" / "metrics.json").exists()


def test_retraining_into_the_same_version_needs_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    recipe_file = str(write_recipe(tmp_path, epochs=1, **{"export.version": 1}))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", recipe_file])
    assert exit_info.value.code == 0
    metrics = tmp_path / "repo" / "tiny" / "metrics.json"
    first = metrics.read_text()
    capsys.readouterr()
    assert "already holds a model" in _refused([recipe_file, "seed=1"], capsys)
    assert metrics.read_text() == first
    with pytest.raises(SystemExit) as exit_info:
        main(["train", recipe_file, "seed=1", "export.overwrite=true"])
    assert exit_info.value.code == 0
    assert json.loads(metrics.read_text())["seed"] == 1


def test_resume_without_a_checkpoint_is_an_error_in_process(tmp_path: Path) -> None:
    config = parse_train_config(recipe(tmp_path), "r")
    with pytest.raises(ConfigError, match="resume: no checkpoint in"):
        run(config, resume=True)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_elastic_restart_before_the_first_checkpoint_starts_over(tmp_path: Path) -> None:
    config = parse_train_config(recipe(tmp_path), "r")
    restarted = Recipe(config, DistState(restart_count=1))
    restarted.setup(resume=True)
    assert restarted.resumed_from == 0


def test_a_version_that_appears_while_training_keeps_the_trained_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import surge.train.recipe as recipe_module

    config = parse_train_config(recipe(tmp_path, epochs=1, **{"export.version": 1}), "r")

    def another_run_exports(self: Recipe, weights: dict[str, torch.Tensor]) -> None:
        _existing_version(tmp_path)  # while this run trains

    monkeypatch.setattr(recipe_module.Recipe, "save", another_run_exports)
    with pytest.raises(ConfigError, match="already holds a model.*trained weights are kept in"):
        run(config)
    assert (tmp_path / "run" / "ckpt" / "best.safetensors").is_file()
    assert (tmp_path / "repo" / "tiny" / "1" / "model.onnx").read_bytes() == b"the committed model"


def test_without_a_version_the_export_takes_a_number_free_for_both_models(tmp_path: Path) -> None:
    from surge.train.publish import target

    _existing_version(tmp_path, "tiny")
    (tmp_path / "repo" / "tiny-torch" / "2").mkdir(parents=True)
    config = parse_train_config(recipe(tmp_path, **{"export.torch_name": "tiny-torch"}), "r")
    assert target(config)[3] == 3
    assert target(parse_train_config(recipe(tmp_path), "r"))[3] == 2


@pytest.mark.parametrize(("pointer", "message"), [
    ("garbage", "is not a checkpoint pointer"),
    ('{"epoch": 2}', "is not a checkpoint pointer"),
    ('{"checkpoint": "epoch-0009"}', "names 'epoch-0009', which is not a checkpoint"),
    ('{"checkpoint": "../elsewhere"}', "which is not a checkpoint"),
])
def test_a_broken_latest_pointer_is_one_line_not_a_traceback(tmp_path: Path, pointer: str,
                                                             message: str) -> None:
    from surge.train.checkpoint import latest_checkpoint

    (tmp_path / "epoch-0001").mkdir()
    (tmp_path / "latest.json").write_text(pointer)
    with pytest.raises(ConfigError, match=message):
        latest_checkpoint(tmp_path)
    (tmp_path / "latest.json").write_text('{"checkpoint": "epoch-0001", "epoch": 1}')
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0001"


@pytest.mark.parametrize("name", ["tiny", "tiny-torch"])
@pytest.mark.parametrize("changes", [[], ["export.version=1"],
                                     ["export.version=1", "export.overwrite=true"]])
def test_a_file_where_an_exported_model_goes_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_processes: list[object],
    name: str, changes: list[str],
) -> None:
    model_path = tmp_path / "repo" / name
    model_path.parent.mkdir()
    model_path.write_text("not a model directory\n")
    err = _refused([str(write_recipe(tmp_path)), "export.torch_name=tiny-torch", *changes],
                   capsys)
    assert f"export: {model_path} is a file" in err
    assert not (tmp_path / "run").exists()
    assert model_path.read_text() == "not a model directory\n"


def test_a_file_as_the_version_to_overwrite_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_processes: list[object],
) -> None:
    version = tmp_path / "repo" / "tiny" / "1"
    version.parent.mkdir(parents=True)
    version.write_text("not a version directory\n")
    err = _refused([str(write_recipe(tmp_path)), "export.version=1", "export.overwrite=true"],
                   capsys)
    assert f"export: {version} is a file" in err
    assert not (tmp_path / "run").exists()


def test_a_fifo_as_config_is_refused_not_waited_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Reading the recipe from a FIFO blocked forever."""
    from tests.unit.fifo import bounded, make_fifo

    fifo = make_fifo(tmp_path / "recipe.yaml")
    err = bounded(fifo, lambda: _refused([str(fifo)], capsys))
    assert err == f"error: {fifo}: not a regular file"


@pytest.mark.parametrize(("text", "message"), [
    ("foo: 1\n", "unknown key 'foo'"),
    ("epochs: abc\n", "epochs: Input should be a valid integer"),
])
def test_a_key_given_wrong_is_named_before_keys_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str,
) -> None:
    """A recipe with a misspelt or mistyped key and no `model` section was refused as
    "missing key 'model'", naming nothing the user wrote."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert _refused([str(path)], capsys) == f"error: {path}: {message}" + (
        "" if "unknown" in message else " (got 'abc')")


def test_an_export_that_fails_its_check_leaves_no_version_to_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The files stayed in the repository when the check against PyTorch failed, as the newest
    version, which `surge serve` then served; a version that was there before is kept."""
    import surge.train.publish as publish_module
    from surge.errors import ModelLoadError
    from surge.repository import Repository

    def differs(*_a: object, **_k: object) -> None:
        raise ModelLoadError("exported model differs from the trained one")

    monkeypatch.setattr(publish_module, "verify", differs)
    config = parse_train_config(recipe(tmp_path, **{"export.torch_name": "tiny-torch"}), "r")
    with pytest.raises(ModelLoadError, match="differs"):
        publish(tiny_mlp(), config, {"accuracy": 0.5}, torch.zeros(2, FEATURES))
    assert not (tmp_path / "repo" / "tiny" / "1").exists()
    assert not (tmp_path / "repo" / "tiny-torch" / "1").exists()
    assert not (tmp_path / "repo" / "tiny" / "metrics.json").exists()
    monkeypatch.undo()
    publish(tiny_mlp(), config, {"accuracy": 0.5}, torch.zeros(2, FEATURES))
    assert Repository(tmp_path / "repo").served_versions("tiny") == [1]


class _NoValidation(SyntheticDataset):
    def training(self, options: DataOptions) -> tuple[Split, Split]:
        train, validation = super().training(options)
        return train, Split(validation.inputs[:0], validation.labels[:0])


def no_validation() -> _NoValidation:
    return _NoValidation()


def test_a_dataset_with_no_validation_samples_is_refused_before_training(tmp_path: Path) -> None:
    """It trained a whole epoch and then raised a traceback: ZeroDivisionError validating a
    classifier, ValueError (no detections to concatenate) validating the detector."""
    config = parse_train_config(recipe(tmp_path, **{
        "data.dataset": "tests.unit.train.test_train_inputs:no_validation"}), "r")
    with pytest.raises(ConfigError, match="the validation split of data.dataset has no samples"):
        run(config)
    assert not (tmp_path / "repo").exists()

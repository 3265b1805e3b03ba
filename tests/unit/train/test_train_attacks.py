"""Recipes and checkpoints that used to fail only after training, or with a traceback: one
validation sample, labels or class ids of another count, no export format, a trainer.json of wrong types,
a resume into fewer epochs than the checkpoint has done, two runs in one run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from surge.cli import main
from surge.errors import ConfigError, ModelLoadError
from surge.repository import Repository
from surge.train.config import parse_train_config
from surge.train.launcher import LaunchOptions, validate
from surge.train.publish import publish
from surge.train.recipe import run
from surge.train.runlock import run_lock
from tests.unit.train.tiny import CLASSES, FEATURES, recipe, tiny_mlp, write_recipe


def _config(tmp: Path, **changes: Any) -> Any:
    return parse_train_config(recipe(tmp, **changes), "r")


def test_a_validation_split_of_one_sample_exports_a_dynamic_batch(tmp_path: Path) -> None:
    """The export was traced from that one sample: torch.export fixed the batch dimension at 1
    and the trained run ended in its traceback (exit 1), exporting nothing."""
    result = run(_config(tmp_path, epochs=1, **{"data.test_size": 1}))
    assert result.published is not None
    loaded = Repository(tmp_path / "repo").load("tiny", 1)
    out = loaded.runner.run({"x": torch.zeros(3, FEATURES).numpy()})
    assert next(iter(out.values())).shape == (3, CLASSES)


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize(("changes", "message"), [
    ({"export.labels": ["a"]},
     "export.labels lists 1 names, but model.builder .* gives 4 class scores per sample"),
    ({"data.classes": 10}, "the training split's labels hold class id 9, but model.builder .* "
                           "gives 4 class scores per sample: give the model 10 classes"),
])
def test_classes_the_model_does_not_have_are_refused_before_training(
    tmp_path: Path, nproc: int, changes: dict[str, Any], message: str,
) -> None:
    """The repository refused labels of another count when it loaded the export, after the
    whole run; a class id past the model's scores failed the first step with cross-entropy's
    IndexError traceback."""
    config = _config(tmp_path, epochs=1, parallelism="ddp" if nproc > 1 else "none", **changes)
    with pytest.raises(ConfigError, match=message):
        validate(config, LaunchOptions(nproc=nproc)) if nproc > 1 else run(config)
    assert not (tmp_path / "run" / "ckpt").exists()
    assert not (tmp_path / "repo").exists()


def test_a_failed_export_removes_the_config_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its config.yaml stayed, and won over the next export's own (labels, ...): an export
    that failed on its labels failed again on every later run."""
    import surge.train.publish as publish_module

    def differs(*_a: object, **_k: object) -> None:
        raise ModelLoadError("exported model differs from the trained one")

    monkeypatch.setattr(publish_module, "verify", differs)
    config = _config(tmp_path, **{"export.torch_name": "tiny-torch"})
    with pytest.raises(ModelLoadError):
        publish(tiny_mlp(), config, {"accuracy": 0.5}, torch.zeros(2, FEATURES))
    assert not (tmp_path / "repo" / "tiny" / "config.yaml").exists()
    assert not (tmp_path / "repo" / "tiny-torch" / "config.yaml").exists()
    hand_tuned = tmp_path / "repo" / "tiny" / "config.yaml"
    hand_tuned.write_text("max_batch_size: 8\n")
    with pytest.raises(ModelLoadError):
        publish(tiny_mlp(), config, {"accuracy": 0.5}, torch.zeros(2, FEATURES))
    assert hand_tuned.read_text() == "max_batch_size: 8\n"


def test_no_export_format_is_refused_in_the_recipe(tmp_path: Path) -> None:
    """The run trained, then failed: the check loads a version that holds no model file."""
    with pytest.raises(ConfigError, match=r"export.formats: List should have at least 1 item"):
        _config(tmp_path, **{"export.formats": []})


@pytest.fixture
def one_epoch(tmp_path: Path) -> Path:
    run(_config(tmp_path, epochs=1, **{"export.repo": None}))
    return tmp_path / "run" / "ckpt" / "epoch-0001" / "trainer.json"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("epoch", "x", "epoch is 'x', not a whole number >= 0"),
    ("step", -3, "step is -3, not a whole number >= 0"),
    ("best_epoch", True, "best_epoch is True, not a whole number >= 0"),
    ("history", 5, "history is 5, not a list of epoch records"),
    ("history", [1], "history is [1], not a list of epoch records"),
    ("best_metric", "high", "best_metric is 'high', not a number"),
    ("model", [], "model is [], not a mapping"),
])
def test_a_trainer_json_of_wrong_types_is_refused_in_one_line(
    tmp_path: Path, one_epoch: Path, field: str, value: Any, message: str,
) -> None:
    """A str epoch failed in range(), an int history in the metrics log: tracebacks."""
    data = json.loads(one_epoch.read_text())
    one_epoch.write_text(json.dumps({**data, field: value}))
    with pytest.raises(ConfigError) as refused:
        run(_config(tmp_path, epochs=2, **{"export.repo": None}), resume=True)
    assert f"{one_epoch}: {message}" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_resume_into_fewer_epochs_than_done_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_processes: list[object],
) -> None:
    """A one-cycle schedule refused to replay the checkpoint's steps: a ValueError traceback
    (and a constant one exported `epochs: 1` with best epoch 2)."""
    changes = {"epochs": 2, "schedule.name": "onecycle", "export.repo": None}
    run(_config(tmp_path, **changes))
    message = "epoch-0002 has done 2 epochs, more than the recipe's epochs 1: resume with epochs=2"
    with pytest.raises(ConfigError, match=message):
        run(_config(tmp_path, **{**changes, "epochs": 1}), resume=True)
    path = write_recipe(tmp_path, **changes)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--nproc", "2", "parallelism=ddp", "--resume", "epochs=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert no_processes == []


@pytest.mark.parametrize("shared", ["checkpoint.dir", "log_dir"])
def test_a_second_run_in_a_run_folder_in_use_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    shared: str,
) -> None:
    """Both ran: each overwrote the other's checkpoints, best weights and latest.json, and
    could export or resume the other's model under its own metrics."""
    import surge.train.launcher as launcher

    started: list[object] = []
    monkeypatch.setattr(launcher, "run_torchrun", lambda command, *_: started.append(command) or 0)
    first = _config(tmp_path / "first")
    second = write_recipe(tmp_path, **{shared: getattr(first, shared) if shared == "log_dir"
                                       else first.checkpoint.dir})
    folder = Path(first.log_dir if shared == "log_dir" else first.checkpoint.dir).resolve()
    args = ["train", str(second), "--nproc", "2", "parallelism=ddp"]
    with run_lock(first), pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"{shared} '{folder}' is in use by another surge train (pid " in err
    assert len(err.splitlines()) == 1
    assert started == []
    with pytest.raises(SystemExit) as exit_info:
        main(args)  # the first run has ended
    assert exit_info.value.code == 0
    assert len(started) == 1


def test_an_empty_label_list_is_refused_in_the_recipe(tmp_path: Path) -> None:
    """A model config refuses `labels: []`: the export would fail after the whole run."""
    with pytest.raises(ConfigError, match=r"export.labels: List should have at least 1 item"):
        _config(tmp_path, **{"export.labels": []})

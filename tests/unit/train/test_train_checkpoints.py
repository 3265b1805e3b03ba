"""A run whose loss or weights become NaN stops before it checkpoints or exports them; a
checkpoint that is damaged, of another model or optimizer, or from a newer Surge is refused in
one line; a resumed run follows the recipe's learning rate and schedule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from surge.cli import main
from surge.errors import ConfigError
from surge.tasks import Split
from surge.tasks.data import SyntheticDataset
from surge.train.checkpoint import LATEST
from surge.train.config import parse_train_config
from surge.train.distributed import DistState
from surge.train.precision import make_precision
from surge.train.recipe import DivergedError, Recipe, run
from tests.unit.train.tiny import recipe, write_recipe


class NaNSample(SyntheticDataset):
    """The synthetic task with one NaN in the 38th training sample."""

    def training(self, options: Any) -> tuple[Split, Split]:
        train, test = super().training(options)
        inputs = train.inputs.clone()
        inputs[37, 2] = float("nan")
        return Split(inputs, train.labels), test


def nan_sample() -> NaNSample:
    return NaNSample()


def _config(tmp: Path, **changes: Any) -> Any:
    return parse_train_config(recipe(tmp, **changes), "r")


def test_a_diverging_loss_stops_the_run_in_one_line_without_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["train", str(write_recipe(tmp_path)), "optimizer.name=sgd", "optimizer.lr=1e30"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: epoch 1, step 2/8 (step 2 of the run): the training loss is "
                          "nan; training stopped without checkpointing or exporting"), err
    assert "lower optimizer.lr (1e+30)" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "repo" / "tiny" / "1").exists()
    assert not (tmp_path / "run" / "ckpt" / LATEST).exists()


def test_a_nan_in_the_data_stops_the_run_at_its_step(tmp_path: Path) -> None:
    config = _config(tmp_path, **{"data.dataset": f"{__name__}:nan_sample"})
    with pytest.raises(DivergedError, match=r"epoch 1, step \d/8 .* the training loss is nan"):
        run(config)
    assert not (tmp_path / "repo" / "tiny").exists()


def test_nan_weights_are_never_checkpointed(tmp_path: Path) -> None:
    trainer = Recipe(_config(tmp_path), DistState())
    trainer.setup(resume=False)
    weights = {"1.weight": torch.ones(2), "5.bias": torch.tensor([1.0, float("inf")])}
    with pytest.raises(DivergedError, match="epoch 3: weight 5.bias holds NaN or infinite"):
        trainer.check_finite_weights(weights, 2)


def test_with_a_grad_scaler_a_nan_loss_is_its_skipped_step(tmp_path: Path) -> None:
    trainer = Recipe(_config(tmp_path), DistState())
    trainer.setup(resume=False)
    with pytest.raises(DivergedError):
        trainer.check_finite_loss(float("inf"), 0, 0)
    trainer.precision = make_precision("fp32", torch.device("cpu"))
    trainer.precision.scaler = torch.amp.GradScaler("cpu", enabled=True)
    trainer.check_finite_loss(float("inf"), 0, 0)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run's checkpoint directory."""
    tmp = tmp_path_factory.mktemp("saved")
    run(_config(tmp, epochs=1, **{"export.repo": None}))
    return tmp / "run" / "ckpt"


class Code:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("a pickle that runs code",))


def _damage(checkpoint: Path, how: str) -> None:
    epoch = checkpoint / "epoch-0001"
    if how == "truncated weights":
        (epoch / "model.safetensors").write_bytes((epoch / "model.safetensors").read_bytes()[:99])
    elif how == "truncated optimizer":
        (epoch / "optimizer.pt").write_bytes((epoch / "optimizer.pt").read_bytes()[:99])
    elif how == "code in the optimizer file":
        torch.save({"optimizer": Code()}, epoch / "optimizer.pt")
    elif how == "newer schema":
        trainer = json.loads((epoch / "trainer.json").read_text())
        (epoch / "trainer.json").write_text(json.dumps({**trainer, "schema": 2, "ema": {}}))


@pytest.mark.parametrize(("how", "changes", "message"), [
    ("truncated weights", {}, "epoch-0001/model.safetensors cannot be read (SafetensorError"),
    ("truncated optimizer", {}, "epoch-0001/optimizer.pt cannot be read (RuntimeError"),
    ("code in the optimizer file", {}, "epoch-0001/optimizer.pt cannot be read (Unpickling"),
    ("newer schema", {}, "has schema 2 and unknown fields ema; this Surge reads schema 1"),
    ("", {"model.kwargs": {"hidden": 32}},
     "holds weights of another model (1.weight: saved [16, 8], model [32, 8], 5 mismatch(es))"),
    ("", {"optimizer.name": "sgd"}, "was saved with optimizer.name adamw; cannot resume it "
                                    "with sgd"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(
    tmp_path: Path, saved_run: Path, how: str, changes: dict[str, Any], message: str,
) -> None:
    shutil.copytree(saved_run, tmp_path / "run" / "ckpt")
    _damage(tmp_path / "run" / "ckpt", how)
    with pytest.raises(ConfigError) as refused:
        run(_config(tmp_path, epochs=2, **{"export.repo": None}, **changes), resume=True)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _lrs(tmp: Path) -> list[float]:
    lines = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["lr"] for line in lines]


@pytest.mark.parametrize(("schedule", "first", "then"), [
    ("cosine", {"epochs": 2}, {"epochs": 4}),
    ("onecycle", {"epochs": 1, "optimizer.lr": 0.1}, {"epochs": 2, "optimizer.lr": 0.001}),
])
def test_a_resumed_run_follows_the_recipe_schedule_and_learning_rate(
    tmp_path: Path, schedule: str, first: dict[str, Any], then: dict[str, Any],
) -> None:
    """The saved optimizer's param groups replaced the recipe's lr, max_lr and the start of a
    chained (cosine) schedule."""
    base = {"schedule.name": schedule, "export.repo": None, "data.train_size": 64}
    run(_config(tmp_path / "fresh", **base, **then))
    run(_config(tmp_path / "resumed", **base, **first))
    run(_config(tmp_path / "resumed", **base, **then), resume=True)
    resumed_epochs = slice(first["epochs"], None)
    assert _lrs(tmp_path / "resumed")[resumed_epochs] == pytest.approx(
        _lrs(tmp_path / "fresh")[resumed_epochs])


def test_a_new_run_forgets_an_old_runs_checkpoint_before_it_can_restart(tmp_path: Path) -> None:
    """An elastic restart of a new run resumed the earlier run's latest checkpoint."""
    run(_config(tmp_path, epochs=2, **{"export.repo": None}))
    config = _config(tmp_path, epochs=3, **{"export.repo": None, "model.kwargs": {"hidden": 8}})
    Recipe(config, DistState()).setup(resume=False)
    assert not (tmp_path / "run" / "ckpt" / LATEST).exists()
    restarted = Recipe(config, DistState(restart_count=1))
    restarted.setup(resume=True)
    assert restarted.resumed_from == 0


def test_a_resumed_run_exports_the_best_weights_its_checkpoint_knew(tmp_path: Path) -> None:
    """A stopped run may have kept a later epoch in best.safetensors than its last checkpoint
    counts as best; resumed, it exported those weights under the checkpoint's best epoch."""
    from safetensors.torch import load_file, save_file

    run(_config(tmp_path, epochs=1, **{"export.repo": None}))
    best = tmp_path / "run" / "ckpt" / "best.safetensors"
    kept = load_file(str(best))
    save_file({k: torch.zeros_like(v) for k, v in kept.items()}, str(best))
    Recipe(_config(tmp_path, epochs=1, **{"export.repo": None}), DistState()).setup(resume=True)
    assert all(torch.equal(v, kept[k]) for k, v in load_file(str(best)).items())

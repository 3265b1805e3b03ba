"""Elastic restart under torchrun: a rank dies mid-run and the job resumes from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.train.tiny import write_recipe

from surge.cli import main
from surge.repository import Repository

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_killed_rank_restarts_from_the_last_checkpoint_and_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 128 samples / batch 16 = 8 steps per epoch; checkpoints after epochs 2 and 4; rank 1 dies
    # in its 28th step (epoch 4), after epoch 3 was logged but not checkpointed.
    config = write_recipe(
        tmp_path, epochs=4, parallelism="ddp", checkpoint={"dir": str(tmp_path / "run" / "ckpt"),
                                                           "interval": 2},
        model={"builder": "tests.unit.train.tiny:crashing_mlp",
               "kwargs": {"crash_rank": 1, "crash_at_call": 28},
               "input_name": "x", "output_name": "y", "input_shape": [8]},
    )
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the workers import the test model
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--nproc", "2", "--max-restarts", "1"])
    assert exit_info.value.code == 0
    records = [json.loads(line)
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # The restarted workers replayed epoch 3 from the epoch-2 checkpoint.
    assert [(r["epoch"], r["attempt"], r["resumed_from"]) for r in records] == [
        (1, 0, 0), (2, 0, 0), (3, 1, 2), (4, 1, 2)]
    assert json.loads((tmp_path / "run" / "ckpt" / "latest.json").read_text())["epoch"] == 4
    assert Repository(tmp_path / "repo").load("tiny").signature.input_names == ["x"]


def test_without_restarts_the_crash_fails_the_run_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_recipe(
        tmp_path, epochs=1, parallelism="ddp",
        model={"builder": "tests.unit.train.tiny:crashing_mlp",
               "kwargs": {"crash_rank": 1, "crash_at_call": 2},
               "input_name": "x", "output_name": "y", "input_shape": [8]},
    )
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--nproc", "2"])
    assert exit_info.value.code == 2
    assert "training failed: torchrun exited with status 1" in capsys.readouterr().err

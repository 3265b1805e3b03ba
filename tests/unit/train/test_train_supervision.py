"""A diverged run stops at its first divergence: torchrun would restart its workers after any
failure (`--max-restarts K`), and a diverged run diverged K more times from the same checkpoint.
The rank that sees the NaN writes `log_dir/diverged.json`; `surge train` stops torchrun when it
appears and says why in one line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import surge.train.launcher as launch_module
import surge.train.rank as rank_module
from surge.cli import main
from surge.train.launcher import run_torchrun
from surge.train.recipe import DivergedError
from surge.train.supervision import DIVERGED_ENV, DIVERGED_FILE, mark_diverged, read_diverged
from tests.unit.train.tiny import write_recipe

# A torchrun whose rank diverged: it would restart the workers (and they diverge again).
DIVERGING_TORCHRUN = """
import json, os, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
marker = pathlib.Path(os.environ["SURGE_DIVERGED_FILE"])
marker.write_text(json.dumps({"rank": 1, "message": "the training loss is nan"}))
time.sleep(60)
"""


def test_a_diverged_rank_stops_torchrun_rather_than_let_it_restart(tmp_path: Path) -> None:
    marker = tmp_path / DIVERGED_FILE
    started = time.monotonic()
    assert run_torchrun([sys.executable, "-c", DIVERGING_TORCHRUN], marker) == 143
    assert time.monotonic() - started < 30  # not the 60 s of its restarts
    assert read_diverged(marker) == (1, "the training loss is nan")


def test_the_divergence_ends_surge_train_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def diverging(command: list[str], diverged: Path | None = None) -> int:
        assert diverged is not None
        mark_diverged(diverged, 1, "epoch 1, step 2/8: the training loss is nan; lower it")
        return 143  # stopped by surge train

    monkeypatch.setattr(launch_module, "run_torchrun", diverging)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_recipe(tmp_path, parallelism="ddp")), "--nproc", "2",
              "--max-restarts", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: training diverged on rank 1 (not restarted: with --max-restarts 3 it "
                   "would only diverge again): epoch 1, step 2/8: the training loss is nan; "
                   "lower it")


def test_an_earlier_runs_divergence_does_not_stop_a_new_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    stale = tmp_path / "run" / DIVERGED_FILE
    mark_diverged(stale, 0, "an earlier run diverged")
    seen: list[bool] = []

    def fine(command: list[str], diverged: Path | None = None) -> int:
        seen.append(stale.exists())
        return 0

    monkeypatch.setattr(launch_module, "run_torchrun", fine)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_recipe(tmp_path, parallelism="ddp")), "--nproc", "2"])
    assert exit_info.value.code == 0
    assert seen == [False]  # removed before torchrun started


def test_a_rank_started_after_the_divergence_exits_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart that torchrun began before `surge train` stopped it trains nothing."""
    marker = tmp_path / DIVERGED_FILE
    mark_diverged(marker, 0, "the training loss is nan")
    monkeypatch.setenv(DIVERGED_ENV, str(marker))
    runs: list[object] = []
    monkeypatch.setattr(rank_module, "run", lambda *args, **kwargs: runs.append(args))
    assert rank_module.main([str(write_recipe(tmp_path))]) == 2
    assert runs == []


def test_the_diverged_rank_writes_the_file_instead_of_printing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "run" / DIVERGED_FILE
    monkeypatch.setenv(DIVERGED_ENV, str(marker))
    monkeypatch.setenv("RANK", "3")

    def diverge(*args: object, **kwargs: object) -> None:
        raise DivergedError("epoch 1, step 2/8: the training loss is nan")

    monkeypatch.setattr(rank_module, "run", diverge)
    assert rank_module.main([str(write_recipe(tmp_path))]) == 2
    assert json.loads(marker.read_text()) == {
        "rank": 3, "message": "epoch 1, step 2/8: the training loss is nan"}
    assert capsys.readouterr().err == ""  # surge train says it, once for all ranks
    monkeypatch.delenv(DIVERGED_ENV)  # a rank no `surge train` watches says it itself
    assert rank_module.main([str(write_recipe(tmp_path))]) == 2
    assert "the training loss is nan" in capsys.readouterr().err


def test_a_damaged_marker_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{not json")
    assert read_diverged(tmp_path / "m.json") is None
    assert read_diverged(tmp_path / "absent.json") is None

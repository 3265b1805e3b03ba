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
    # An earlier run's divergence: the restarted workers must not take it for this run's.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "diverged.json").write_text('{"rank": 0, "message": "earlier"}')
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


def test_a_diverged_run_stops_at_its_first_divergence_despite_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    """torchrun restarted the workers after the NaN, and they diverged again from the same
    checkpoint, --max-restarts more times, and the run ended in torchrun's traceback. Now the
    diverged rank's file makes `surge train` stop torchrun, and say why, in one line."""
    config = write_recipe(tmp_path, parallelism="ddp",
                          optimizer={"name": "sgd", "lr": 1e30})  # NaN in step 2
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--nproc", "2", "--max-restarts", "2"])
    assert exit_info.value.code == 2
    captured = capfd.readouterr()  # the ranks' and torchrun's output too
    err = captured.err
    assert captured.out.count("training tests.unit.train.tiny:tiny_mlp") == 1, captured.out
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if "the training loss is nan" in line]
    assert line.startswith("error: training diverged on rank "), err
    assert "(not restarted: with --max-restarts 2 it would only diverge again)" in line
    assert "epoch 1, step 2/8 (step 2 of the run): the training loss is nan" in line
    assert not (tmp_path / "repo" / "tiny").exists()


def test_a_stopped_run_ends_without_torchruns_traceback(tmp_path: Path) -> None:
    """SIGTERM to `surge train --nproc 2`: torchrun stopped its ranks, then printed the Python
    traceback of its SignalException. Now it ends quietly and `surge train` exits 143."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = write_recipe(tmp_path, parallelism="ddp", epochs=1000)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    train = subprocess.Popen(
        [sys.executable, "-c", "from surge.cli import main; main()", "train", str(config),
         "--nproc", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            assert train.poll() is None, train.communicate()[0]
            time.sleep(0.2)
        train.send_signal(signal.SIGTERM)
        output = train.communicate(timeout=90)[0]
    finally:
        if train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)
            train.communicate()
    assert train.returncode == 128 + signal.SIGTERM, output[-4000:]
    assert "Traceback" not in output, output[-4000:]

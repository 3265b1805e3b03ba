"""Pipeline and FSDP2 recipes under torchrun: train, stop, resume from their checkpoints, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.train.tiny import write_recipe

from surge.cli import main
from surge.repository import Repository

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("parallelism", ["pipeline", "fsdp"])
def test_two_process_run_resumes_and_exports(
    parallelism: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the workers import the test model
    config = str(write_recipe(tmp_path, parallelism=parallelism, precision="bf16", epochs=1))
    for args in ([], ["--resume", "epochs=2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", config, "--nproc", "2", *args])
        assert exit_info.value.code == 0
    records = [json.loads(line)
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["resumed_from"], r["parallelism"]) for r in records] == [
        (1, 0, parallelism), (2, 1, parallelism)]
    assert records[1]["train_loss"] < records[0]["train_loss"]
    checkpoint = tmp_path / "run" / "ckpt" / "epoch-0002"
    optimizer_files = {p.name for p in checkpoint.glob("optimizer*.pt")}
    assert optimizer_files == ({"optimizer-stage0.pt", "optimizer-stage1.pt"}
                               if parallelism == "pipeline" else {"optimizer.pt"})
    assert Repository(tmp_path / "repo").load("tiny").signature.input_names == ["x"]

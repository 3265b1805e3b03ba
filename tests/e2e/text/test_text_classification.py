"""Text classification end to end at small size: `surge train` two short epochs of the
bag-of-tokens model on a Reuters R8 subset, export, serve the `-text` pipeline, and one
tritonclient request of plain text comes back as labels from the recipe's label list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.cli_runner import run_cli
from tests.integration.server.conftest import start_server, triton_client

from surge.repository import Repository

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
EARNINGS = "shr cts vs cts net profit mln vs mln revs mln vs mln quarterly dividend"


def recipe(tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "recipes" / "text-bag.yaml").read_text())
    config.update(epochs=2, parallelism="none", batch_size=32, log_dir=str(tmp_path / "run"))
    config["optimizer"]["lr"] = 1e-2  # a higher constant rate: 64 steps in all
    config["schedule"] = {"name": "constant"}
    config["model"]["kwargs"].update(dim=32, hidden=32)
    config["model"]["input_shape"] = [64]
    config["data"].update(train_size=1024, test_size=256)
    config["checkpoint"]["dir"] = str(tmp_path / "run" / "ckpt")
    config["export"]["repo"] = str(tmp_path / "repo")
    path = tmp_path / "text-bag.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_trained_text_classifier_serves_text_in_label_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["train", str(recipe(tmp_path))], capsys)
    assert code == 0, err
    repo = Repository(tmp_path / "repo")
    config = repo.config("reuters-bag")
    assert config.parameters == {"task": "text-classification", "dataset": "reuters-r8"}
    metrics = json.loads((tmp_path / "repo" / "reuters-bag" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.6  # two epochs on 1,024 stories; a constant guess is 0.51
    # the exported graph takes any sequence length: served batches pad to their own longest
    runner = repo.load("reuters-bag").runner
    assert [s.shape for s in runner.signature.inputs] == [(-1, -1)]

    server = start_server(tmp_path / "repo", tmp_path / "server.log")
    try:
        result = triton_client(str(ROOT / "examples" / "text" / "classify.py"), "--url",
                               server.http.removeprefix("http://"), "--json", EARNINGS,
                               "crude oil prices rose after opec agreed to cut production")
    finally:
        assert server.stop() == 0, server.output()
    assert result.returncode == 0, result.stderr[-3000:] + server.output()[-2000:]
    answer = json.loads(result.stdout)
    labels, scores = answer["labels"], np.array(answer["scores"])
    assert scores.shape == (2, 3)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert all(label in config.labels for row in labels for label in row)
    assert labels[0][0] == "earn"

"""`surge tune` on a pipeline: its model step is evaluated and profiled, every served trial serves
the whole pipeline, and the choice lands in the step model's config.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo

from surge.repository import Repository

PIPELINE = """kind: pipeline
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs:
- {name: labels, datatype: BYTES, shape: [-1, 1]}
- {name: scores, datatype: FP32, shape: [-1, 1]}
steps:
- {name: score, model: tiny, inputs: {x: x}, outputs: {y: logits}}
- name: top
  processor: labels.topk
  params: {k: 1, labels: [a, b, c, d]}
  inputs: {logits: logits}
  outputs: {labels: labels, scores: scores}
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # five servers started one after another, each a pipeline and its model
def test_tune_a_pipelines_model_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repo", config="max_batch_size: 8\n")
    (repo / "tiny-labels").mkdir()
    (repo / "tiny-labels" / "config.yaml").write_text(PIPELINE)
    x = np.random.default_rng(1).random((200, 4), dtype=np.float32)
    np.savez(tmp_path / "val.npz", x=x, labels=x.argmax(axis=1))
    code, out, err = run_cli([
        "tune", str(repo), "--model", "tiny-labels", "--step", "score", "--data",
        str(tmp_path / "val.npz"), "--task", "classification", "--slo-p99", "2s",
        "--concurrency", "4", "--budget", "6m", "--variants", "int8-dynamic",
        "--max-batch", "1,8", "--delays", "0,1", "--settings", "1x1,2x1",
        "--profile-time", "0.05s", "--full-run", "0.5s", "--short-runs", "0", "--finalists", "1",
        "--final-rounds", "1",
    ], capsys)
    assert code == 0, err
    assert "step 'score' of tiny-labels" in out

    report = json.loads((repo / "tiny" / "tuning" / "report.json").read_text())
    assert (report["model"], report["pipeline"], report["step"]) == ("tiny", "tiny-labels",
                                                                      "score")
    assert {v["variant"] for v in report["variants"]} == {"original", "int8-dynamic"}
    # every trial served and loaded the pipeline, not the model alone
    assert report["served"]
    assert all(not r["error"] for r in report["served"])
    assert {r["served"] for r in report["served"]} == {"tiny-labels"}
    assert all(r["measured"]["throughput"] > 0 for r in report["served"])
    assert report["tuned"]["measured"]["errors"] == 0
    # the choice is in config.yaml, or the untuned one where the choice lost back to back
    chosen = report["baseline" if report["kept_untuned"] else "tuned"]["candidate"]
    config = Repository(repo).config("tiny")
    assert (config.max_batch_size, config.instances, config.threads) == (
        chosen["max_batch_size"], chosen["instances"], chosen["threads"])
    pipeline = Repository(repo).config("tiny-labels")
    assert pipeline.kind == "pipeline"
    assert pipeline.max_batch_size == 8

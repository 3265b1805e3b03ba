"""Tuning a pipeline: which model step is tuned, and how a served trial stages the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.errors import ConfigError
from surge.repository import Repository
from surge.tuning.serving import stage_model, stage_pipeline
from surge.tuning.space import ORIGINAL, Candidate
from surge.tuning.target import TuneTarget, resolve_target
from tests.unit.tiny_models import make_repo, write_onnx

PIPELINE = """kind: pipeline
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: labels, datatype: BYTES, shape: [-1, 1]}]
steps:
- {name: first, model: tiny, inputs: {x: x}, outputs: {y: h}}
- {name: second, model: other, inputs: {x: h}, outputs: {y: z}}
- name: top
  processor: labels.topk
  params: {k: 1, labels: [a, b, c, d]}
  inputs: {logits: z}
  outputs: {labels: labels}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = make_repo(tmp_path / "repo")
    write_onnx(root / "other" / "1" / "model.onnx")
    (root / "other" / "config.yaml").write_text("max_batch_size: 4\n")
    (root / "pipe").mkdir()
    (root / "pipe" / "config.yaml").write_text(PIPELINE)
    return root


def test_a_model_is_its_own_target(repo: Path) -> None:
    target = resolve_target(Repository(repo), "tiny", None)
    assert target == TuneTarget("tiny")
    assert target.served == "tiny"


def test_a_pipeline_step_names_the_model_tuned_and_the_pipeline_served(repo: Path) -> None:
    target = resolve_target(Repository(repo), "pipe", "second")
    assert (target.model, target.pipeline, target.step, target.served) == (
        "other", "pipe", "second", "pipe")


@pytest.mark.parametrize(("name", "step", "message"), [
    ("pipe", None, r"pipeline 'pipe' has model steps \['first', 'second'\]: choose one"),
    ("pipe", "top", r"'top' is a processor step; its model steps are \['first', 'second'\]"),
    ("pipe", "nope", r"'nope' is no step"),
    ("tiny", "first", r"--step 'first': 'tiny' is a model, not a pipeline"),
])
def test_bad_steps_are_config_errors(repo: Path, name: str, step: str | None,
                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_target(Repository(repo), name, step)


@pytest.mark.parametrize(("name", "step"), [("other", None), ("pipe", "second")])
def test_a_model_that_decodes_in_its_workers_is_refused_with_what_to_do(
        repo: Path, name: str, step: str | None) -> None:
    (repo / "other" / "config.yaml").write_text(
        "max_batch_size: 4\npreprocess:\n- {name: decode, processor: image.decode, "
        "inputs: {image: files}, outputs: {pixels: x}, params: {size: [2, 2], layout: hw, "
        "color: gray}}\n")
    with pytest.raises(ConfigError, match="model 'other' has preprocess steps, which surge "
                                          "tune does not measure: tune an entry"):
        resolve_target(Repository(repo), name, step)


def test_the_only_model_step_is_chosen_without_step(repo: Path) -> None:
    config = (repo / "pipe" / "config.yaml").read_text()
    single = config.replace("- {name: second, model: other, inputs: {x: h}, outputs: {y: z}}\n",
                            "").replace("outputs: {y: h}", "outputs: {y: z}")
    (repo / "pipe" / "config.yaml").write_text(single)
    assert resolve_target(Repository(repo), "pipe", None) == TuneTarget("tiny", "pipe", "first")


def test_a_trial_stages_the_pipeline_with_the_candidate_on_its_step(repo: Path,
                                                                   tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    candidate = Candidate(ORIGINAL, 8, 1.0, 2, 1)
    stage_model(repo / "other", candidate, 50.0, stage)
    stage_pipeline(repo, "pipe", "other", stage)
    staged = Repository(stage)
    assert sorted(staged.model_names()) == ["other", "pipe", "tiny"]
    tuned = staged.config("other")
    assert (tuned.max_batch_size, tuned.instances, tuned.threads) == (8, 2, 1)
    assert staged.config("tiny").max_batch_size == 8  # the other step as it is
    assert staged.config("pipe").kind == "pipeline"
    assert staged.load("tiny").runner is not None


def test_the_cli_names_the_model_steps_when_step_is_wrong(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli_runner import run_cli

    code, _, err = run_cli(["tune", str(repo), "--model", "pipe", "--step", "top", "--data",
                            "synthetic", "--budget", "1m"], capsys)
    assert code == 2
    assert "'top' is a processor step; its model steps are ['first', 'second']" in err

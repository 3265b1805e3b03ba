"""Hostile model configs and folders: each gets one clear error naming the file and the value,
never a traceback, a hang, or a served model that differs from what the config says."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from surge.errors import ConfigError, ModelLoadError
from surge.pipeline.graph import check_step_models
from surge.repository import Repository
from surge.repository.config import ModelConfig, parse_config
from tests.unit.tiny_models import make_repo

LADDER = "slo_p99_ms: 50\nmax_accuracy_drop: 2\n"


@pytest.mark.parametrize(("data", "message"), [
    ({"max_batch_size": True}, "max_batch_size: Input should be a valid integer (got True)"),
    ({"max_batch_size": "64"}, "max_batch_size: Input should be a valid integer (got '64')"),
    ({"instances": True}, "instances: Input should be a valid integer"),
    ({"slo_p99_ms": True}, "slo_p99_ms: Input should be a valid number"),
    ({"queue": {"max_size": False}}, "queue.max_size: Input should be a valid integer"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [True, 4]}]}, "shape.0"),
    ({"max_batch_size": 10**12}, "max_batch_size: Input should be less than or equal to 65536"),
    ({"queue": {"max_size": 10**12}}, "queue.max_size: Input should be less than or equal"),
    ({"slo_p99_ms": float("inf")}, "slo_p99_ms: Input should be less than or equal to 3600000"),
    ({"queue": {"default_timeout_ms": float("inf")}}, "default_timeout_ms: Input should be less"),
    ({"queue": {"default_timeout_ms": 1e-300}},
     "default_timeout_ms: Input should be greater than or equal to 0.001"),
    ({"ladder_accuracy": {"original": float("nan")}}, "ladder_accuracy.original"),
    ({"cluster": {"resources": {"x": float("inf")}}}, "cluster.resources.x"),
    ({"schema_version": 99}, "schema_version 99 is not supported (this Surge reads 1)"),
    ({"max_batch_size": 0, "batching": {"preferred_batch_sizes": [8]}},
     "preferred_batch_sizes needs max_batch_size above 0"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                 {"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}, "inputs names 'x' twice"),
    ({"ladder": ["original", "../x"], "slo_p99_ms": 50, "max_accuracy_drop": 2},
     "invalid ladder rung name '../x'"),
])
def test_bad_values_name_the_file_and_the_value(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^m/config.yaml: ") as caught:
        parse_config(data, "m/config.yaml")
    assert message in str(caught.value)


def test_numbers_written_as_numbers_still_validate() -> None:
    config = parse_config({"max_batch_size": 64, "slo_p99_ms": 50, "hang_min_ms": 100,
                           "queue": {"default_timeout_ms": 1000}}, "m/config.yaml")
    assert (config.max_batch_size, config.slo_p99_ms) == (64, 50.0)


@pytest.mark.parametrize("make", [
    lambda path: path.mkdir(),
    lambda path: os.mkfifo(path),
    lambda path: path.symlink_to(path.parent / "missing.yaml"),
], ids=["directory", "fifo", "dangling-symlink"])
def test_config_that_is_not_a_regular_file_is_an_error(tmp_path: Path, make: Any) -> None:
    make_repo(tmp_path)
    path = tmp_path / "tiny" / "config.yaml"
    path.unlink()
    make(path)  # a FIFO would block the reader for ever; a directory raised IsADirectoryError
    repo = Repository(tmp_path)
    with pytest.raises(ConfigError, match="tiny/config.yaml: not a regular file"):
        repo.config("tiny")
    assert repo.entries()[0].state == "UNAVAILABLE"


@pytest.mark.parametrize(("override", "message"), [
    ("inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]", "input 'x' shape [-1, 3]"),
    ("inputs: [{name: x, datatype: INT64, shape: [-1, 4]}]", "input 'x' datatype INT64"),
    ("outputs: [{name: y, datatype: FP32, shape: [-1, 7]}]", "output 'y' shape [-1, 7]"),
])
def test_overrides_that_contradict_the_model_are_refused(tmp_path: Path, override: str,
                                                         message: str) -> None:
    make_repo(tmp_path, config=override + "\n")
    with pytest.raises(ModelLoadError, match=r"tiny/1/model.onnx: config gives " + message
                       .replace("[", r"\[").replace("]", r"\]")):
        Repository(tmp_path).load("tiny")


def test_override_may_still_name_a_variable_dim(tmp_path: Path) -> None:
    make_repo(tmp_path, config="inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n")
    assert Repository(tmp_path).load("tiny").signature.inputs[0].shape == (-1, 4)


def test_ladder_rung_that_does_not_exist_makes_the_model_unavailable(tmp_path: Path) -> None:
    make_repo(tmp_path, config=LADDER + "ladder: [original, nope]\n")
    entry = Repository(tmp_path).entries()[0]
    assert entry.state == "UNAVAILABLE"
    assert "has no variant 'nope'" in entry.reason


def test_ladder_rung_with_a_corrupt_variant_yaml_is_unavailable(tmp_path: Path) -> None:
    make_repo(tmp_path, config=LADDER + "ladder: [original, v1]\n")
    variant = tmp_path / "tiny" / "variants" / "v1"
    variant.mkdir(parents=True)
    (variant / "model.onnx").write_bytes((tmp_path / "tiny" / "1" / "model.onnx").read_bytes())
    (variant / "variant.yaml").write_text("{{{ not yaml\n")
    entry = Repository(tmp_path).entries()[0]
    assert entry.state == "UNAVAILABLE"
    assert "v1/variant.yaml: invalid YAML" in entry.reason


def test_ladder_rung_missing_at_load_is_a_config_error(tmp_path: Path) -> None:
    from surge.engine.ladder import ladder_rungs

    make_repo(tmp_path, config=LADDER + "ladder: [original, nope]\n")
    repo = Repository(tmp_path)
    with pytest.raises(ConfigError, match="tiny/config.yaml: ladder rung 'nope': model 'tiny' "
                       "has no variant 'nope'"):
        ladder_rungs(repo, "tiny", repo.config("tiny"))


@pytest.mark.parametrize("check", ["{accuracy: .nan, reference_accuracy: 0.9}",
                                   "{accuracy: 0.8, reference_accuracy: true}",
                                   "{accuracy: 80, reference_accuracy: 0.9}"])
def test_ladder_accuracy_from_variant_yaml_must_be_a_fraction(tmp_path: Path, check: str) -> None:
    from surge.engine.ladder import ladder_rungs

    make_repo(tmp_path, config=LADDER + "ladder: [original, v1]\n")
    variant = tmp_path / "tiny" / "variants" / "v1"
    variant.mkdir(parents=True)
    (variant / "variant.yaml").write_text(f"check: {check}\n")
    repo = Repository(tmp_path)
    with pytest.raises(ConfigError, match="has no measured accuracy"):
        ladder_rungs(repo, "tiny", repo.config("tiny"))


PIPELINE = """kind: pipeline
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: y, datatype: FP32, shape: [-1, 4]}]
steps:
- {name: s, model: %s, inputs: {x: x}, outputs: {y: y}}
"""


def test_pipelines_naming_each_other_are_refused_not_deadlocked(tmp_path: Path) -> None:
    make_repo(tmp_path)
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(PIPELINE % other)
    repo = Repository(tmp_path)
    states = {e.name: (e.state, e.reason) for e in repo.entries()}
    assert states["a"] == ("UNAVAILABLE", "pipeline 'a', step 's': 'b' is a pipeline; a step "
                           "names a model")
    assert states["tiny"][0] == "READY"
    with pytest.raises(ConfigError, match="'a' is a pipeline"):
        check_step_models("b", repo.config("b"), repo.kind_of)


def test_pipeline_step_on_a_broken_model_is_left_to_its_load(tmp_path: Path) -> None:
    make_repo(tmp_path, config="- not a mapping\n")
    assert Repository(tmp_path).kind_of("tiny") == "model"
    assert ModelConfig().kind == "model"

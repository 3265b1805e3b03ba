"""Adversarial model configs and repository layouts: each is refused with one line naming the
file, the key and the value, never loaded to fail later or to serve other than it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.configfile import parse_yaml
from surge.engine.reload import override_config
from surge.errors import ConfigError, InputError, ModelLoadError
from surge.repository import Repository
from surge.repository.config import ModelConfig, parse_config
from tests.unit.tiny_models import make_repo


@pytest.mark.parametrize(("text", "message"), [
    ("parameters: {released: 2024-01-01}\n",
     "value '2024-01-01' (line 1) is a YAML timestamp, not plain data"),
    ("labels: [a, 2001-12-14t21:59:43.10-05:00]\n", "is a YAML timestamp"),
    ("parameters: {blob: !!binary aGVsbG8=}\n", "is a YAML binary"),
    ("parameters: {tags: !!set {a, b}}\n", "a YAML set (line 1) is not plain data"),
    ("parameters: !!omap [{a: 1}]\n", "a YAML omap (line 1) is not plain data"),
    ("max_batch_size: 8\n<<: {max_batch_size: 4}\n", "YAML merge keys (<<, line 2)"),
])
def test_yaml_that_is_not_plain_data_is_refused(tmp_path: Path, text: str, message: str) -> None:
    # a date or a set in `parameters` validated, then failed the model's config endpoint (500)
    make_repo(tmp_path, config=text)
    with pytest.raises(ConfigError, match=r"tiny/config.yaml: ") as caught:
        Repository(tmp_path).config("tiny")
    assert message in str(caught.value)


def test_plain_yaml_still_parses() -> None:
    data = parse_yaml("a: '2024-01-01'\nb: [1, 2.5, .nan, true, null, x]\nc: {'<<': 1}\n"
                      "d: !!int '8'\n")
    assert (data["a"], data["c"], data["d"]) == ("2024-01-01", {"<<": 1}, 8)


@pytest.mark.parametrize("data", [
    {"batching": {"enabled": "yes"}},
    {"batching": {"enabled": 0}},
    {"pinned": 1},
    {"pinned": "true"},
    {"version_policy": {"all": 1}},
    {"spin_wait": 1},
    {"spin_wait": "false"},
])
def test_booleans_are_taken_as_written(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="^m/config.yaml: .*valid boolean"):
        parse_config(data, "m/config.yaml")


def test_booleans_written_as_booleans_still_validate() -> None:
    config = parse_config({"batching": {"enabled": False}, "pinned": True, "spin_wait": "run",
                           "version_policy": {"all": True}}, "m/config.yaml")
    assert (config.batching.enabled, config.pinned, config.spin_wait) == (False, True, "run")
    assert parse_config({"spin_wait": True}, "m").spin_wait is True


def test_an_override_is_held_to_the_same_booleans() -> None:
    with pytest.raises(ConfigError, match="batching.enabled"):
        override_config(ModelConfig(), {"batching": {"enabled": "no"}})


def test_a_dim_past_int64_is_refused() -> None:
    # it validated, then the model's metadata could not be written as JSON (500)
    data = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 10**22]}]}
    with pytest.raises(ConfigError, match=r"^m/config.yaml: inputs.0.shape.1: .*less than"):
        parse_config(data, "m/config.yaml")


@pytest.mark.parametrize("variant", ["../x", "", "a/b", "."])
def test_variant_must_be_a_plain_name(variant: str) -> None:
    with pytest.raises(ConfigError, match="^m/config.yaml: variant: .*invalid variant name"):
        parse_config({"variant": variant}, "m/config.yaml")


def test_variant_original_serves_the_version_files(tmp_path: Path) -> None:
    # `surge models` listed it READY, and a load by name looked for variants/original/
    repo = Repository(make_repo(tmp_path, config="variant: original\n"))
    assert repo.entries()[0].state == "READY"
    loaded = repo.load("tiny")
    assert (loaded.variant, loaded.version) == (None, 1)


def test_a_fixed_batch_dim_on_a_batched_model_is_refused(tmp_path: Path) -> None:
    # it loaded, then refused every request of another batch size
    make_repo(tmp_path, config="inputs: [{name: x, datatype: FP32, shape: [8, 4]}]\n")
    with pytest.raises(ModelLoadError, match=r"shape \[8, 4\], but its first dim is the batch"):
        Repository(tmp_path).load("tiny")


def test_a_model_without_batching_may_fix_its_first_dim(tmp_path: Path) -> None:
    make_repo(tmp_path, config="max_batch_size: 0\n"
                               "inputs: [{name: x, datatype: FP32, shape: [2, 4]}]\n")
    signature = Repository(tmp_path).load("tiny").signature
    assert (signature.inputs[0].shape, signature.batched) == ((2, 4), False)
    signature.validate_inputs({"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(InputError):
        signature.validate_inputs({"x": np.zeros((3, 4), np.float32)})


@pytest.mark.parametrize(("folders", "config", "message"), [
    (("0", "01", " 1"), "", "version_policy {'latest': 1} selects nothing: no version folder "
                            "(not versions, ignored: [' 1', '0', '01'])"),
    (("1",), "version_policy: {specific: [7]}\n",
     "version_policy {'specific': [7]} selects nothing: version folders [1]"),
])
def test_no_version_served_says_why(tmp_path: Path, folders: tuple[str, ...], config: str,
                                    message: str) -> None:
    for folder in folders:
        (tmp_path / "tiny" / folder).mkdir(parents=True)
    (tmp_path / "tiny" / "config.yaml").write_text(config)
    entry = Repository(tmp_path).entries()[0]
    assert entry.state == "UNAVAILABLE"
    assert entry.reason == f"tiny/config.yaml: {message}"


@pytest.mark.parametrize(("config", "key"), [
    ("variant: nope\n", "variant 'nope'"),
    ("slo_p99_ms: 50\nmax_accuracy_drop: 1\nladder: [original, nope]\n", "ladder rung 'nope'"),
])
def test_a_missing_variant_names_the_config_key(tmp_path: Path, config: str, key: str) -> None:
    entry = Repository(make_repo(tmp_path, config=config)).entries()[0]
    assert entry.state == "UNAVAILABLE"
    assert entry.reason.startswith(f"tiny/config.yaml: {key}: model 'tiny' has no variant 'nope'")


def test_an_empty_label_list_is_refused() -> None:
    # `labels: []` was taken as no labels: a classifier's config served as a model of no task
    with pytest.raises(ConfigError, match=r"^m/config.yaml: labels: .*at least 1 item"):
        parse_config({"labels": []}, "m/config.yaml")

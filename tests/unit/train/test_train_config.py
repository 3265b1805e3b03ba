"""Recipe configs: YAML plus dotted, type-checked `key=value` overrides; unknown keys rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.errors import ConfigError
from surge.tasks import resolve_builder
from surge.train.config import dump_train_config, load_train_config, parse_train_config
from tests.unit.train.tiny import recipe, write_recipe


def test_overrides_set_nested_keys_with_yaml_typed_values(tmp_path: Path) -> None:
    config = load_train_config(write_recipe(tmp_path), [
        "precision=bf16", "optimizer.lr=1e-3", "pipeline.split_points=[2, '3']",
        "data.flip=false", "epochs=7",
    ])
    assert config.precision == "bf16"
    assert config.optimizer.lr == pytest.approx(1e-3)
    assert config.pipeline.split_points == ["2", "3"]
    assert config.data.flip is False
    assert config.epochs == 7


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimiser.lr=0.1"], "unknown key 'optimiser'"),
    (["optimizer.betas=0.9"], "unknown key 'optimizer.betas'"),
    (["epochs=many"], "epochs: Input should be a valid integer"),
    # numbers and switches as written, as in config.yaml: these were read as 1, 3, 1.0 and true
    (["epochs=true"], "epochs: Input should be a valid integer (got True)"),
    (["epochs=3.0"], "epochs: Input should be a valid integer (got 3.0)"),
    (["optimizer.lr=true"], "optimizer.lr: Input should be a valid number (got True)"),
    (["data.flip=1"], "data.flip: Input should be a valid boolean (got 1)"),
    (["export.version=2024-01-01"], "is a YAML timestamp, not plain data"),
    (["precision=fp8"], "precision: Input should be 'fp32', 'bf16' or 'fp16'"),
    (["batch_size=0"], "batch_size: Input should be greater than or equal to 1"),
    (["model.builder=no_colon"], "'no_colon' is not a registered model; a builder must look "
                                 "like 'package.module:factory'"),
    (["epochs"], "override 'epochs' must look like key=value"),
    (["epochs.x=1"], "'epochs' is not a section"),
    (["task=segmentation"], "task: Value error, unknown task 'segmentation'; expected one of "
                            "classification, detection, embedding"),
    (["task=tests.unit.train.tiny:TinyMLP"], "is type, not a surge.tasks.Task class"),
    (["task=tests.unit.train.nowhere:Task"], "cannot import 'tests.unit.train.nowhere'"),
])
def test_bad_values_name_the_key(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="^.*$") as info:
        load_train_config(write_recipe(tmp_path), overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_the_file_is_rejected(tmp_path: Path) -> None:
    data = recipe(tmp_path)
    data["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="recipe.yaml: unknown key 'learning_rate'"):
        parse_train_config(data, "recipe.yaml")


def test_missing_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing key 'model'"):
        parse_train_config({"epochs": 1}, "r.yaml")


def test_dumped_config_reads_back_equal(tmp_path: Path) -> None:
    config = load_train_config(write_recipe(tmp_path), ["parallelism=fsdp"])
    again = load_train_config(dump_train_config(config, tmp_path / "out" / "config.yaml"))
    assert again == config


def test_the_default_model_recipe_is_valid() -> None:
    config = load_train_config(Path(__file__).parents[3] / "recipes" / "fashion.yaml")
    assert config.model.builder == "fashion-cnn"
    assert resolve_builder(config.model.builder) == "surge_examples.fashion.model:fashion_cnn"
    assert config.data.dataset == "fashion-mnist"
    assert config.export.name == "fashion"


def test_the_detector_recipe_is_valid() -> None:
    config = load_train_config(Path(__file__).parents[3] / "recipes" / "detector.yaml")
    assert config.task == "detection"
    assert config.data.dataset == "fashion-detection"
    assert config.data.root == "out/fashion-det"
    assert resolve_builder(config.model.builder) == "surge_examples.detection.model:centernet"
    assert config.parallelism == "ddp"


def test_classification_stays_the_default(tmp_path: Path) -> None:
    assert load_train_config(write_recipe(tmp_path)).task == "classification"

"""Where the library needs data for a model by default (the optimizer's check samples and
calibration, the load generator's payloads), it asks the registry for the dataset the model's
config names, instead of recognising the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from surge.bench.payload import InputSpec, sample_inputs
from surge.errors import ConfigError
from surge.optimize.low_rank import LowRankConfig
from surge.optimize.mixed_precision import Bf16Config
from surge.optimize.pipeline import OptimizeOptions, _uses_training, build_source
from surge.optimize.prune import PruneConfig
from surge.optimize.quantize import Int8DynamicConfig, Int8StaticConfig
from surge.optimize.registry import OptimizeConfig
from surge.repository import Repository
from surge.tasks import DataOptions, Dataset, EvalDataset, Split
from tests.unit.tiny_models import make_repo

ROWS = 40


class FourFeatures(Dataset):
    """Rows 0, 1, 2, ... of four features each: easy to recognise in what was sampled."""

    name = "four-features"

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        inputs = torch.arange(ROWS * 4, dtype=torch.float32).reshape(ROWS, 4)
        return Split(inputs, torch.arange(ROWS) % 4), Split(inputs[:8], torch.arange(8) % 4)

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        inputs = -np.arange(ROWS * 4, dtype=np.float32).reshape(ROWS, 4)
        return EvalDataset(self.name, {input_name: inputs}, np.arange(ROWS) % 4)


def four_features() -> FourFeatures:
    return FourFeatures()


SPEC = "tests.unit.tasks.test_data_defaults:four_features"


def _repo(tmp_path: Path, parameters: str) -> Repository:
    return Repository(make_repo(tmp_path, config=f"max_batch_size: 8\nparameters: {parameters}\n"))


def test_optimizer_checks_on_the_dataset_the_config_names(tmp_path: Path) -> None:
    repo = _repo(tmp_path, f"{{task: classification, dataset: '{SPEC}'}}")
    source = build_source(repo, "tiny", OptimizeOptions(finetune_epochs=1, check_rows=10),
                          tmp_path)
    assert source.task == "classification"
    np.testing.assert_array_equal(source.samples["x"], -np.arange(40, dtype=np.float32)
                                  .reshape(10, 4))
    assert source.labels is not None
    assert source.labels.tolist() == [0, 1, 2, 3] * 2 + [0, 1]
    assert source.calibration is not None
    assert len(source.calibration["x"]) == ROWS  # every training row: fewer than 512
    assert float(source.calibration["x"].min()) >= 0.0  # from the training split
    assert callable(source.finetune)


def test_variants_that_need_no_training_rows_do_not_read_the_training_split(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading (for text, tokenizing) a training split costs seconds: only static int8's
    calibration and a pruning's own fine-tune read it."""
    reads: list[int] = []
    original = FourFeatures.training

    def counted(self: FourFeatures, options: DataOptions) -> tuple[Split, Split]:
        reads.append(1)
        return original(self, options)

    monkeypatch.setattr(FourFeatures, "training", counted)
    repo = _repo(tmp_path, f"{{task: classification, dataset: '{SPEC}'}}")
    options = OptimizeOptions(finetune_epochs=1, check_rows=10)
    source = build_source(repo, "tiny", options, tmp_path, training=False)
    assert reads == []
    assert (source.task, source.calibration, source.finetune) == ("classification", None, None)
    assert source.labels is not None  # the held-out checks still score the task
    build_source(repo, "tiny", options, tmp_path)
    assert reads == [1]
    assert not _uses_training({"int8-dynamic": Int8DynamicConfig(), "bf16": Bf16Config()})
    assert _uses_training({"int8-static": Int8StaticConfig()})
    assert _uses_training({"prune-50": PruneConfig(ratio=0.5)})
    assert not _uses_training({"prune-50": PruneConfig(ratio=0.5, finetune=None)})
    assert not _uses_training({"lowrank": LowRankConfig()})

    @dataclass(frozen=True)
    class PluginConfig(OptimizeConfig):  # a plugin's variant may read calibration rows
        verb = "plugin"

    assert _uses_training({"plugin": PluginConfig()})


def test_without_a_dataset_the_checks_use_random_inputs(tmp_path: Path) -> None:
    source = build_source(_repo(tmp_path, "{}"), "tiny", OptimizeOptions(), tmp_path)
    assert (source.task, source.labels, source.calibration) == (None, None, None)
    assert source.samples["x"].shape == (64, 4)


def test_an_unknown_task_in_the_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tiny: parameters.task: unknown task 'segmentation'"):
        build_source(_repo(tmp_path, "{task: segmentation}"), "tiny", OptimizeOptions(), tmp_path)


def test_bench_payloads_are_dataset_rows_where_the_dataset_has_the_input() -> None:
    specs = [InputSpec("x", "FP32", (-1, 4)), InputSpec("mask", "INT64", (-1, 4))]
    sets = sample_inputs(specs, batch_size=2, variants=3, dataset=SPEC)
    np.testing.assert_array_equal(sets[1]["x"], -np.arange(8, 16, dtype=np.float32)
                                  .reshape(2, 4))
    assert sets[1]["mask"].shape == (2, 4)  # not in the dataset: random
    random = sample_inputs(specs, batch_size=2, variants=3)
    assert float(random[1]["x"].min()) >= 0.0  # no dataset: uniform [0, 1) values
    wrong_type = sample_inputs([InputSpec("x", "FP16", (-1, 4))], variants=1, dataset=SPEC)
    assert wrong_type[0]["x"].dtype == np.float16
    assert float(wrong_type[0]["x"].min()) >= 0.0  # the rows do not fit: random

"""Structured pruning: layers really shrink, shapes stay consistent, the right channels go."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from surge.errors import ConfigError
from surge.optimize import PruneConfig, Tolerance, prune
from surge.optimize.prune import count_macs_params, prune_module
from surge.zoo.resnet import resnet18
from tests.unit.optimize.models import MLP, TinyCNN, image_source, seeded, vector_source


def test_pruned_cnn_has_fewer_params_and_macs_and_same_io(tmp_path: Path) -> None:
    source = image_source(tmp_path)
    variant = prune(source, PruneConfig(ratio=0.5, finetune=None), tmp_path / "p")
    details = variant.details
    assert details["params"] < 0.5 * details["params_original"]
    assert details["macs"] < 0.5 * details["macs_original"]
    graph = onnx.load(str(variant.path)).graph
    convs = [i for i in graph.initializer if len(i.dims) == 4]
    assert sorted(c.dims[0] for c in convs) == [4, 8]  # 8 -> 4 and 16 -> 8 output channels
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1:] == [4]
    assert variant.check.samples == 64


def test_resnet_residual_chains_stay_consistent() -> None:
    model = seeded(resnet18(classes=10, width=8))
    example = (torch.rand(2, 3, 32, 32),)
    pruned = prune_module(model, example, ratio=0.5)
    assert pruned(*example).shape == (2, 10)
    macs0, params0 = count_macs_params(model, example)
    macs1, params1 = count_macs_params(pruned, example)
    assert params1 < 0.4 * params0
    assert macs1 < 0.4 * macs0
    block = pruned.layers[0]
    assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels == 4
    assert pruned.fc.out_features == 10
    assert model.fc.in_features == 64  # the original is untouched


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_mlp_keeps_the_largest_neurons(tmp_path: Path, norm: str) -> None:
    """Half the hidden neurons carry (almost) nothing: pruning 50% by norm removes exactly them,
    so the output barely moves; a random choice would change it a lot."""
    model = MLP((8, 32, 4))
    with torch.no_grad():
        model.net[0].weight[::2] *= 1e-4  # even neurons: tiny incoming weights
        model.net[0].bias[::2] = 0.0
    source = vector_source(tmp_path, model)
    variant = prune(source, PruneConfig(ratio=0.5, norm=norm, finetune=None), tmp_path / norm,
                    Tolerance(max_abs=1e-2))
    assert variant.check.passed, variant.check.failures
    assert variant.details["params"] < variant.details["params_original"]


def test_finetune_function_runs_on_the_pruned_copy(tmp_path: Path) -> None:
    seen: list[int] = []

    def finetune(module: nn.Module) -> None:
        seen.append(module.features[0].out_channels)

    source = image_source(tmp_path)
    variant = prune(source, PruneConfig(ratio=0.25, finetune=finetune), tmp_path / "p")
    assert seen == [6]
    assert variant.details["finetuned"] is True
    assert variant.parameters["finetune"] == "custom"
    assert source.module.features[0].out_channels == 8


def test_failing_tolerance_is_reported(tmp_path: Path) -> None:
    source = image_source(tmp_path, seeded(TinyCNN()))
    variant = prune(source, PruneConfig(ratio=0.75, finetune=None), tmp_path / "p",
                    Tolerance(max_abs=1e-6))
    assert not variant.check.passed
    assert variant.check.failures[0].startswith("max abs error")


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_out_of_range_is_refused(ratio: float) -> None:
    with pytest.raises(ConfigError, match=f"prune ratio {ratio} is out of range"):
        PruneConfig(ratio=ratio)


def test_unknown_ignored_module_is_refused() -> None:
    with pytest.raises(ConfigError, match="no such modules"):
        prune_module(TinyCNN(), (torch.rand(1, 1, 8, 8),), 0.5, ignore=("nope",))


def test_onnx_only_source_cannot_be_pruned(tmp_path: Path) -> None:
    source = image_source(tmp_path)
    onnx_path = source.ensure_onnx()
    onnx_only = type(source)("tiny", ["image"], ["logits"], source.samples, onnx_path=onnx_path)
    with pytest.raises(ConfigError, match="prune needs the PyTorch model"):
        prune(onnx_only, PruneConfig(ratio=0.5), tmp_path / "p")
    assert np.isfinite(onnx_only.reference_outputs()["logits"]).all()

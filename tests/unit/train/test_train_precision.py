"""Mixed precision: bf16 autocast on CPU over fp32 master weights; fp16 + GradScaler on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surge.errors import ConfigError
from surge.train.config import DataConfig
from surge.train.data import load_dataset, train_batches
from surge.train.distributed import DistState
from surge.train.parallel import data_parallel_plan
from surge.train.precision import make_precision
from tests.unit.train.tiny import CLASSES, FEATURES, tiny_mlp


def _train(precision_name: str, device: torch.device) -> tuple[list[float], list[torch.dtype],
                                                             nn.Module, torch.amp.GradScaler]:
    """40 steps on the synthetic task; returns losses and the dtypes the Linear layers produced."""
    torch.manual_seed(0)
    state = DistState(device=device)
    precision = make_precision(precision_name, device)
    plan = data_parallel_plan(tiny_mlp(), "none", state, nn.CrossEntropyLoss(), precision)
    seen: list[torch.dtype] = []
    plan.module[1].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    optimizer = torch.optim.AdamW(plan.module.parameters(), lr=0.02)
    train, _ = load_dataset(DataConfig(dataset="synthetic", train_size=640, classes=CLASSES),
                            [FEATURES], seed=0)
    losses = []
    for epoch in range(4):
        for inputs, labels in train_batches(train, 64, epoch, 0, 1, 0, flip=None):
            losses.append(plan.step(inputs.to(device), labels.to(device)))
            precision.scaler.step(optimizer)
            precision.scaler.update()
            optimizer.zero_grad()
    return [loss for loss in losses if loss is not None], seen, plan.module, precision.scaler


def test_bf16_autocast_training_lowers_the_loss_with_fp32_master_weights() -> None:
    losses, dtypes, model, _ = _train("bf16", torch.device("cpu"))
    assert set(dtypes) == {torch.bfloat16}  # the layers really ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_fp32_runs_without_autocast() -> None:
    _, dtypes, _, scaler = _train("fp32", torch.device("cpu"))
    assert set(dtypes) == {torch.float32}
    assert not scaler.is_enabled()


def test_fp16_is_refused_on_cpu() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        make_precision("fp16", torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_with_grad_scaler_lowers_the_loss_on_cuda() -> None:
    losses, dtypes, model, scaler = _train("fp16", torch.device("cuda"))
    assert set(dtypes) == {torch.float16}
    assert scaler.is_enabled()
    assert scaler.get_scale() > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5

"""DDP, FSDP2 and pipeline stages on 2 gloo processes against one unsplit, unsharded model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from surge.train.config import PipelineConfig
from surge.train.data import Split, train_batches
from surge.train.distributed import DistState
from surge.train.parallel import data_parallel_plan, pipeline_plan
from surge.train.precision import make_precision
from tests.unit.train.tiny import CLASSES, FEATURES, SkipMLP, spawn, tiny_mlp

GLOBAL_BATCH, STEPS = 16, 3
# Pipelined models: name -> (factory, split points). The skip model's shortcut crosses the split.
PIPELINED = {"sequential": (tiny_mlp, []), "skip": (SkipMLP, ["last"])}


def _data() -> Split:
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(GLOBAL_BATCH * STEPS, FEATURES, generator=generator)
    return Split(inputs, torch.randint(0, CLASSES, (GLOBAL_BATCH * STEPS,), generator=generator))


def _train(state: DistState, mode: str, replicas: int, out: Path | None) -> dict[str, torch.Tensor]:
    """STEPS AdamW steps of the tiny MLP; each rank takes its share of each global batch."""
    torch.manual_seed(0)
    precision = make_precision("fp32", state.device)
    plan = data_parallel_plan(tiny_mlp(), mode, state, nn.CrossEntropyLoss(), precision)
    optimizer = torch.optim.AdamW(plan.module.parameters(), lr=0.05)
    for inputs, labels in train_batches(_data(), GLOBAL_BATCH, 0, 0, replicas, state.rank, None):
        plan.step(inputs, labels)
        optimizer.step()
        optimizer.zero_grad()
    from surge.train.checkpoint import full_model_state

    weights = full_model_state(plan.module, mode, state)
    if out is not None and state.is_main:
        torch.save(weights, out)
    return weights


def _pipeline_grads(state: DistState, out: Path) -> None:
    batch = _data()
    inputs, labels = batch.inputs[:GLOBAL_BATCH], batch.labels[:GLOBAL_BATCH]
    precision = make_precision("fp32", state.device)
    results = {}
    for model_name, (factory, points) in PIPELINED.items():
        for schedule in ("gpipe", "1f1b"):
            torch.manual_seed(0)
            config = PipelineConfig(schedule=schedule, microbatches=4, split_points=points)
            plan = pipeline_plan(factory(), config, [FEATURES], GLOBAL_BATCH, state,
                                 nn.CrossEntropyLoss(), precision)
            loss = plan.step(inputs, labels)
            grads = {n: p.grad.clone() for n, p in plan.module.named_parameters()}
            results[model_name, schedule] = {"loss": loss, "grads": grads}
    torch.save(results, out / f"stage{state.rank}.pt")


def _two_ranks(state: DistState, out: Path) -> None:
    """Everything the tests compare, in one pair of processes (starting them is the slow part)."""
    for mode in ("ddp", "fsdp"):
        _train(state, mode, 2, out / f"{mode}.pt")
    _pipeline_grads(state, out)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    spawn(_two_ranks, 2, out)
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(mode: str, two_ranks: Path) -> None:
    expected = _train(DistState(), "none", 1, None)
    got = torch.load(two_ranks / f"{mode}.pt", weights_only=True)
    assert got.keys() == expected.keys()
    start = tiny_mlp().state_dict()
    for name, value in expected.items():
        assert not torch.allclose(value, start[name])  # training really moved the weights
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_name", sorted(PIPELINED))
def test_two_stage_pipeline_matches_the_unsplit_model(model_name: str, two_ranks: Path) -> None:
    torch.manual_seed(0)
    model = PIPELINED[model_name][0]()
    batch = _data()
    loss = nn.functional.cross_entropy(model(batch.inputs[:GLOBAL_BATCH]),
                                       batch.labels[:GLOBAL_BATCH])
    loss.backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    stages = [torch.load(two_ranks / f"stage{r}.pt", weights_only=True) for r in range(2)]
    for schedule in ("gpipe", "1f1b"):
        first, last = stages[0][model_name, schedule], stages[1][model_name, schedule]
        assert first["loss"] is None  # only the last stage sees the loss
        assert last["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        assert first["grads"]
        assert last["grads"]
        grads = {**first["grads"], **last["grads"]}
        assert grads.keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5)


def test_channels_last_is_applied_in_one_process_and_ddp_plans() -> None:
    precision = make_precision("fp32", torch.device("cpu"))
    for channels_last in (False, True):
        model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten())
        plan = data_parallel_plan(model, "none", DistState(), nn.CrossEntropyLoss(), precision,
                                  channels_last)
        weight = plan.module[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert weight.is_contiguous() is not channels_last

"""FSDP2 on the DLRM: its embedding tables (kept in a ModuleList, which FSDP cannot shard as
one unit) are sharded table by table across 2 gloo processes, and training matches one process
with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from surge.tasks.tabular import binary_loss
from surge.train.data import Split, train_batches
from surge.train.distributed import DistState
from surge.train.parallel import data_parallel_plan, shard_units
from surge.train.precision import make_precision
from surge_examples.recommendation.model import Dlrm
from tests.unit.train.tiny import spawn

USERS, ITEMS, CATEGORIES = 40, 30, 6
GLOBAL_BATCH, STEPS = 32, 4


def _dlrm() -> Dlrm:
    torch.manual_seed(0)
    return Dlrm(USERS, ITEMS, CATEGORIES, dense=2, dim=4, hidden=8)


def _data() -> Split:
    generator = torch.Generator().manual_seed(3)
    rows = GLOBAL_BATCH * STEPS
    ids = [torch.randint(0, n, (rows, 1), generator=generator) for n in (USERS, ITEMS, CATEGORIES)]
    dense = torch.rand(rows, 2, generator=generator)
    packed = torch.cat([*(i.float() for i in ids), dense], dim=1)
    return Split(packed, torch.randint(0, 2, (rows,), generator=generator).float())


def _train(state: DistState, mode: str, replicas: int) -> tuple[dict[str, torch.Tensor],
                                                               dict[str, list[int]]]:
    """STEPS AdamW steps; returns the whole model's weights and this rank's table shapes."""
    plan = data_parallel_plan(_dlrm(), mode, state, binary_loss,
                              make_precision("fp32", state.device))
    optimizer = torch.optim.AdamW(plan.module.parameters(), lr=0.05)
    for inputs, labels in train_batches(_data(), GLOBAL_BATCH, 0, 0, replicas, state.rank, None):
        plan.step(inputs, labels)
        optimizer.step()
        optimizer.zero_grad()
    local = {name: list(getattr(p, "to_local", lambda p=p: p)().shape)
             for name, p in plan.module.named_parameters() if name.startswith("tables.")}
    from surge.train.checkpoint import full_model_state

    return full_model_state(plan.module, mode, state), local


def _two_ranks(state: DistState, out: Path) -> None:
    weights, local = _train(state, "fsdp", 2)
    if state.is_main:
        torch.save(weights, out / "fsdp.pt")
    torch.save(local, out / f"tables{state.rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dlrm_fsdp")
    spawn(_two_ranks, 2, out)
    return out


def test_each_table_is_its_own_shard_group() -> None:
    model = _dlrm()
    units = shard_units(model)
    assert units[:3] == list(model.tables)
    assert units[3:] == [model.bottom, model.top]


def test_each_process_holds_half_of_every_table(two_ranks: Path) -> None:
    for rank in (0, 1):
        local = torch.load(two_ranks / f"tables{rank}.pt", weights_only=True)
        # dim 0 split across the 2 ranks: 40 users -> 20 rows each, 6 categories -> 3 each
        assert local == {"tables.0.weight": [USERS // 2, 4], "tables.1.weight": [ITEMS // 2, 4],
                         "tables.2.weight": [CATEGORIES // 2, 4]}


def test_sharded_training_matches_one_process_with_the_same_global_batch(two_ranks: Path) -> None:
    expected, _ = _train(DistState(), "none", 1)
    got = torch.load(two_ranks / "fsdp.pt", weights_only=True)
    assert got.keys() == expected.keys()
    start = _dlrm().state_dict()
    for name, value in expected.items():
        assert not torch.allclose(value, start[name])  # training moved every parameter
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5)

"""A load's config override may set `cluster` (the actors' count, CPUs, node labels): the
front end's pool reads it, as it reads `placement` and `instances` (it was refused as "read
from config.yaml by the workers", which a cluster model's placement is not)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from surge.engine import Engine, PoolEvents, PoolSpec
from surge.engine.reload import override_config
from surge.errors import ConfigError
from surge.repository import ModelConfig, Repository
from tests.unit.engine.fakes import FakePool, make_repo


def test_a_cluster_override_is_validated_as_config_yaml() -> None:
    config = override_config(ModelConfig(), {"cluster": {"instances": 3, "cpus": 2}})
    assert (config.cluster.instances, config.cluster.cpus) == (3, 2)
    with pytest.raises(ConfigError, match="cluster.instances"):
        override_config(ModelConfig(), {"cluster": {"instances": 0}})


async def _spec_of_a_load(root: Path) -> PoolSpec:
    specs: list[PoolSpec] = []

    def pools(spec: PoolSpec, events: PoolEvents) -> FakePool:
        specs.append(spec)
        return FakePool(spec, events)

    engine = Engine(Repository(make_repo(root, "max_batch_size: 8\n")), models=[],
                    pool_factory=pools)
    await engine.start()
    try:
        await engine.load("m", {"cluster": {"instances": 3, "node_labels": {"pool": "gpu"}}})
    finally:
        await engine.stop(grace_s=0.0)
    return specs[-1]


def test_the_pool_gets_the_overridden_cluster_settings(tmp_path: Path) -> None:
    spec = asyncio.run(_spec_of_a_load(tmp_path))
    assert spec.config.cluster.instances == 3
    assert spec.config.cluster.node_labels == {"pool": "gpu"}

"""The Engine builds a model's pool where its config places it: worker processes by default,
the cluster's pools for `placement: cluster` (or `auto` on a cluster)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from surge.engine import Engine
from surge.engine.instances import InstancePool, PoolEvents, PoolSpec
from surge.repository import Repository
from tests.unit.engine.fakes import FakePools, make_repo


class LocalSpy(Engine):
    """The default factory, with worker processes replaced by a record of the call."""

    def __init__(self, root: Path, cluster: FakePools | None) -> None:
        super().__init__(Repository(root), cluster_pools=cluster)
        self.local = FakePools()

    def _worker_pool(self, spec: PoolSpec, events: PoolEvents) -> InstancePool:
        return self.local(spec, events)


def served_by(tmp_path: Path, placement: str, on_cluster: bool) -> str:
    make_repo(tmp_path, f"placement: {placement}\n")
    cluster = FakePools() if on_cluster else None
    engine = LocalSpy(tmp_path, cluster)

    async def body() -> None:
        await engine.start()
        await engine.stop(0.0)

    asyncio.run(body())
    if cluster is not None and cluster.built:
        return "cluster"
    return "local" if engine.local.built else "none"


def test_local_placement_stays_on_this_machine_even_on_a_cluster(tmp_path: Path) -> None:
    assert served_by(tmp_path, "local", on_cluster=True) == "local"


def test_cluster_placement_uses_the_cluster_pools(tmp_path: Path) -> None:
    assert served_by(tmp_path, "cluster", on_cluster=True) == "cluster"


def test_auto_follows_the_front_end(tmp_path: Path) -> None:
    assert served_by(tmp_path / "a", "auto", on_cluster=True) == "cluster"
    assert served_by(tmp_path / "b", "auto", on_cluster=False) == "local"


def test_cluster_placement_without_a_cluster_is_not_loaded_with_the_reason(
        tmp_path: Path) -> None:
    assert served_by(tmp_path, "cluster", on_cluster=False) == "none"
    engine = Engine(Repository(tmp_path))

    async def body() -> str:
        await engine.start()
        try:
            engine.model("m")
        except Exception as exc:
            return str(exc)
        finally:
            await engine.stop(0.0)
        return ""

    assert "placement: cluster; serve it with --ray ADDRESS" in asyncio.run(body())

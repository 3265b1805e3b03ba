"""Which models go to the cluster, and what Ray is asked for one instance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surge.cluster.actor import pack_batch, unpack_batch
from surge.cluster.placement import (
    actor_options,
    describe_demand,
    fitting_nodes,
    instance_threads,
    wants_cluster,
)
from surge.errors import ConfigError
from surge.repository.config import ClusterConfig, parse_config


@pytest.mark.parametrize(("placement", "on_cluster", "expected"), [
    ("local", True, False), ("local", False, False), ("cluster", True, True),
    ("cluster", False, True), ("auto", True, True), ("auto", False, False),
])
def test_placement_rule(placement: str, on_cluster: bool, expected: bool) -> None:
    assert wants_cluster(placement, on_cluster) is expected


def test_actor_options_carry_resources_labels_and_avoided_nodes() -> None:
    config = ClusterConfig(cpus=2, gpus=1, resources={"ssd": 1}, node_labels={"pool": "gpu"})
    options = actor_options(config, avoid={"bbb", "aaa"})
    assert options["num_cpus"] == 2
    assert options["num_gpus"] == 1
    assert options["resources"] == {"ssd": 1}
    assert options["max_restarts"] == 0
    assert options["label_selector"] == {"pool": "gpu", "ray.io/node-id": "!in(aaa, bbb)"}
    assert "label_selector" not in actor_options(ClusterConfig())
    assert describe_demand(config) == "CPU 2, ssd 1, GPU 1 on nodes labelled pool=gpu"


def test_threads_default_to_the_reserved_cpus() -> None:
    assert instance_threads(ClusterConfig(cpus=4)) == 4
    assert instance_threads(ClusterConfig(cpus=0.5)) == 1
    assert instance_threads(ClusterConfig(cpus=4, threads=2)) == 2


def test_fitting_nodes_reads_total_resources_labels_and_liveness() -> None:
    nodes = [
        {"NodeID": "head", "Alive": True, "Resources": {"CPU": 0.0}, "Labels": {}},
        {"NodeID": "small", "Alive": True, "Resources": {"CPU": 1.0}, "Labels": {"pool": "a"}},
        {"NodeID": "big", "Alive": True, "Resources": {"CPU": 8.0}, "Labels": {"pool": "b"}},
        {"NodeID": "gone", "Alive": False, "Resources": {"CPU": 8.0}, "Labels": {"pool": "a"}},
    ]
    assert fitting_nodes(ClusterConfig(cpus=1), nodes) == ["small", "big"]
    assert fitting_nodes(ClusterConfig(cpus=4), nodes) == ["big"]
    assert fitting_nodes(ClusterConfig(cpus=4, node_labels={"pool": "a"}), nodes) == []
    assert fitting_nodes(ClusterConfig(gpus=1), nodes) == []


def test_config_fields_are_validated() -> None:
    config = parse_config({"placement": "cluster", "cluster": {"instances": 2,
                                                                "max_instances": 4}}, "m")
    assert (config.placement, config.cluster.instances, config.cluster.max_instances) == (
        "cluster", 2, 4)
    with pytest.raises(ConfigError, match="max_instances"):
        parse_config({"cluster": {"instances": 3, "max_instances": 2}}, "m")
    with pytest.raises(ConfigError, match="placement"):
        parse_config({"placement": "moon"}, "m")


def test_a_batch_travels_as_one_contiguous_buffer() -> None:
    parts = {"x": [np.arange(8, dtype=np.float32).reshape(2, 4),
                   np.ones((1, 4), np.float32)],
             "s": [np.array([b"ab", b"c"], dtype=object), np.array([b""], dtype=object)]}
    batch = pack_batch(parts)
    assert batch.buffer.dtype == np.uint8
    assert batch.buffer.flags.c_contiguous
    out = unpack_batch(batch)
    np.testing.assert_array_equal(out["x"], np.concatenate(parts["x"]))
    assert out["s"].tolist() == [b"ab", b"c", b""]


def test_fitting_nodes_reads_ray_label_selector_operators() -> None:
    """`!v`, `in(a, b)` and `!in(a, b)` are Ray label selectors Ray places actors by: they were
    compared as plain values, and such a model was refused as fitting no node."""
    nodes = [
        {"NodeID": n, "Alive": True, "Resources": {"CPU": 1.0}, "Labels": labels}
        for n, labels in (("a", {"pool": "a"}), ("b", {"pool": "b"}), ("bare", {}))]

    def fit(selector: str) -> list[str]:
        return fitting_nodes(ClusterConfig(node_labels={"pool": selector}), nodes)

    assert fit("a") == ["a"]
    assert fit("!a") == ["b", "bare"]  # a node without the label passes a negated selector
    assert fit("in(a, b)") == ["a", "b"]
    assert fit("!in(a,b)") == ["bare"]


@pytest.mark.parametrize(("settings", "named"), [
    ({"node_labels": {"pool": "a,b"}}, "a,b"),
    ({"node_labels": {"bad key": "a"}}, "bad key"),
    ({"resources": {"CPU": 4}}, "cluster.resources names CPU: give it as cluster.cpus"),
])
def test_settings_ray_refuses_are_named(settings: dict[str, object], named: str) -> None:
    """Such settings were reported as 'no node of the Ray cluster can hold an instance' (or,
    for resources CPU, used for the node check while Ray reserved cluster.cpus)."""
    pytest.importorskip("ray")
    from surge.cluster.placement import check_settings
    from surge.cluster.site import remote_instance_class
    from surge.errors import ModelLoadError

    config = ClusterConfig.model_validate(settings)
    with pytest.raises(ModelLoadError, match="model 'm'") as refused:
        check_settings(config, remote_instance_class(), "m")
    assert named in str(refused.value)
    check_settings(ClusterConfig(node_labels={"pool": "!in(a, b)"}), remote_instance_class(), "m")


def test_a_pool_with_a_malformed_selector_is_refused_for_it(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import asyncio

    from surge.cluster.pool import RayPool
    from surge.cluster.site import ClusterSite
    from surge.engine.instances import PoolSpec
    from surge.errors import ModelLoadError
    from surge.repository import ModelConfig

    async def no_match() -> list[dict[str, object]]:
        return [{"NodeID": "n", "Alive": True, "Resources": {"CPU": 1.0}, "Labels": {}}]

    async def body() -> None:
        spec = PoolSpec("m", 1, ModelConfig.model_validate(
            {"placement": "cluster", "cluster": {"node_labels": {"pool": "a,b"}}}))
        site = ClusterSite(str(tmp_path))
        site.node_table = no_match  # type: ignore[method-assign]
        with pytest.raises(ModelLoadError, match="Ray refuses its cluster settings: .*`a,b`"):
            await RayPool(spec, None, site).start()  # type: ignore[arg-type]

    asyncio.run(body())

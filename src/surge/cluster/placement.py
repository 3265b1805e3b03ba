"""Where a model's instances go: the placement rule, and the Ray options of one instance.

Pure functions over the model config and Ray's node table, so they are tested without a
cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from surge.errors import ModelLoadError
from surge.repository.config import ClusterConfig

NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries its id as this label


def wants_cluster(placement: str, on_cluster: bool) -> bool:
    """Whether a model's instances are Ray actors (True) or local worker processes."""
    if placement == "cluster":
        return True
    return placement == "auto" and on_cluster


def instance_threads(config: ClusterConfig) -> int:
    """Intra-op threads of one instance: the config's, else the CPUs it reserves."""
    return config.threads or max(1, int(config.cpus))


def demand(config: ClusterConfig) -> dict[str, float]:
    """The Ray resources one instance reserves."""
    need = {"CPU": config.cpus, **config.resources}
    if config.gpus:
        need["GPU"] = config.gpus
    return {k: v for k, v in need.items() if v}


def label_selector(config: ClusterConfig, avoid: Iterable[str] = ()) -> dict[str, str]:
    """The node labels an instance requires; `avoid`: node ids it must not go to (silent ones)."""
    selector = dict(config.node_labels)
    avoided = sorted(avoid)
    if avoided:
        selector[NODE_ID_LABEL] = f"!in({', '.join(avoided)})"
    return selector


def actor_options(config: ClusterConfig, avoid: Iterable[str] = ()) -> dict[str, Any]:
    """`ActorClass.options(...)` for one instance of a model with this cluster config."""
    need = demand(config)
    custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU")}
    options: dict[str, Any] = {
        "num_cpus": config.cpus,
        "num_gpus": config.gpus,
        "max_restarts": 0,  # the pool replaces a lost instance itself, on a healthy node
        # One node's loss should take as few of a model's instances as possible.
        "scheduling_strategy": "SPREAD",
    }
    if custom:
        options["resources"] = custom
    selector = label_selector(config, avoid)
    if selector:
        options["label_selector"] = selector
    return options


def check_settings(config: ClusterConfig, actor_class: Any, ref: str) -> None:
    """Refuse what Ray would refuse or read otherwise, naming the setting: else the check of
    the node table reports it as 'no node can hold an instance'."""
    named = sorted(k for k in config.resources if k in ("CPU", "GPU"))
    if named:
        raise ModelLoadError(f"model {ref!r}: cluster.resources names {named[0]}: give it as "
                             f"cluster.{named[0].lower()}s")
    try:  # Ray's own check of the options (label selector syntax and the rest)
        actor_class.options(**actor_options(config))
    except ValueError as exc:
        raise ModelLoadError(f"model {ref!r}: Ray refuses its cluster settings: {exc}") from None


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(_selects(labels.get(key), value) for key, value in wanted.items())


def _selects(label: str | None, selector: str) -> bool:
    """Ray's label selector on one node label: `v`, `!v`, `in(a, b)`, `!in(a, b)`; a node
    without the label passes only a negated one (as Ray schedules)."""
    negated = selector.startswith("!")
    body = selector[1:] if negated else selector
    if body.endswith(")") and "(" in body:
        values = {v.strip() for v in body[body.index("(") + 1:-1].split(",")}
    else:
        values = {body}
    return (label in values) != negated


def fitting_nodes(config: ClusterConfig, nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Ids of the live nodes whose total resources and labels could hold one instance."""
    need = demand(config)
    fit = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        total = node.get("Resources", {})
        if all(total.get(k, 0.0) >= v for k, v in need.items()) and _matches(
                node.get("Labels", {}), config.node_labels):
            fit.append(str(node["NodeID"]))
    return fit


def describe_demand(config: ClusterConfig) -> str:
    need = ", ".join(f"{k} {v:g}" for k, v in demand(config).items()) or "nothing"
    labels = ", ".join(f"{k}={v}" for k, v in config.node_labels.items())
    return need + (f" on nodes labelled {labels}" if labels else "")

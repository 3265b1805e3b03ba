"""Prometheus metrics of the cluster instances, registered beside the engine's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ClusterMetrics:
    """Instances per model and node state, scale events, lost instances, retried batches."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instances = Gauge("surge_cluster_instances", "Ray actor instances per model.",
                               ["model", "state"], registry=registry)
        self.scale_events = Counter("surge_cluster_scale_events_total",
                                    "Cluster instances added (up) or removed (down).",
                                    ["model", "direction"], registry=registry)
        self.lost = Counter("surge_cluster_instances_lost_total",
                            "Cluster instances lost: actor died, node gone or silent.",
                            ["model", "cause"], registry=registry)
        self.batches = Counter("surge_cluster_batches_total",
                               "Batches computed by cluster instances, per node and tensor "
                               "path (shm: shared memory, the direct channel carrying only "
                               "slot names; channel: on the direct channel's socket; ray: as "
                               "Ray actor calls).",
                               ["model", "node", "path"], registry=registry)
        self.retried = Counter("surge_cluster_batches_retried_total",
                               "Batches of a lost instance queued again for another one.",
                               ["model"], registry=registry)

    def register(self, registry: CollectorRegistry) -> None:
        """Also expose these on `registry` (the engine's, which `/metrics` serves)."""
        for metric in (self.instances, self.scale_events, self.lost, self.batches,
                       self.retried):
            registry.register(metric)

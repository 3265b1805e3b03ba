"""Compute nodes on Ray: model instances as actors on other machines, behind the engine's
`InstancePool` seam, so the served model's scheduler stays the only queue.

`connect` joins a cluster as a driver; `ClusterSite` builds the Ray pools; `placement` says
which models go there. Ray is imported only once a cluster is used.
"""

from surge.cluster.connect import ClusterError, ClusterInfo, connect, disconnect
from surge.cluster.placement import wants_cluster
from surge.cluster.site import ClusterSite

__all__ = ["ClusterError", "ClusterInfo", "ClusterSite", "connect", "disconnect", "wants_cluster"]

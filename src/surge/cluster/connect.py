"""Joining a Ray cluster as a driver: the front end's one connection to its compute nodes.

A real driver (`ray.init(address=...)`), not a `ray://` client: actor calls then go straight
from this process to the actors' nodes. Token authentication follows Ray 2.60: a cluster
started with `RAY_AUTH_MODE=token` accepts drivers that bring the same token in
`RAY_AUTH_TOKEN` (or a file named by `RAY_AUTH_TOKEN_PATH`, default `~/.ray/auth_token`).
The dashboard and usage statistics stay off unless the environment asks for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from surge.errors import SurgeError

log = logging.getLogger(__name__)

# Ray reads these when it is imported: set them first, without overriding the user's own.
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1"}
PROBE_TIMEOUT_S = 3.0
NAMESPACE = "surge"


class ClusterError(SurgeError):
    """The Ray cluster cannot be joined or cannot hold what was asked of it."""


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster this front end joined."""

    address: str
    node_id: str  # this front end's own node
    nodes: int
    cpus: float
    gpus: float


def quiet_ray_environment() -> None:
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    # A token given without a mode is meant to be used: Ray would otherwise not send it.
    if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_MODE"] = "token"


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_token(address: str) -> None:
    """One authenticated call to the cluster's GCS: a wrong token fails here within a second,
    where `ray.init` would retry for about 20 s and then report a bare connection failure."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.exceptions import AuthenticationError

    try:
        with _native_stderr_silenced():  # the C++ client logs every refused retry there
            GcsClient(address=address).internal_kv_get(b"surge-probe", None,
                                                       timeout=PROBE_TIMEOUT_S)
    except AuthenticationError:
        raise ClusterError(
            f"the Ray cluster at {address} refused this front end's token: set RAY_AUTH_TOKEN "
            "(or RAY_AUTH_TOKEN_PATH) to the cluster's token") from None
    except Exception as exc:  # timeouts and RPC errors: the same one-line failure as below
        raise ClusterError(f"cannot join the Ray cluster at {address}: {exc}") from None


def check_address(address: str) -> None:
    """Refuse what cannot work before Ray spends its own (long) timeouts on it."""
    if address.startswith("ray://"):
        raise ClusterError(f"--ray {address}: a ray:// client cannot serve; give the cluster's "
                           "GCS address host:port (or 'auto' on a node of the cluster)")
    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterError(f"--ray {address!r}: expected host:port or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({reason})") from None


def connect(address: str) -> ClusterInfo:
    """Join the cluster at `address` ('auto': the one this machine belongs to) as a driver."""
    check_address(address)
    quiet_ray_environment()
    import ray

    if address != "auto":
        check_token(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot join the Ray cluster at {address}: {first}") from None
    return describe()


def describe() -> ClusterInfo:
    import ray

    total = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    info = ClusterInfo(ray.get_runtime_context().gcs_address,
                       ray.get_runtime_context().get_node_id(), len(alive),
                       float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0)))
    log.info("joined Ray cluster %s: %d nodes, %.0f CPUs, %.0f GPUs", info.address, info.nodes,
             info.cpus, info.gpus)
    return info


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()

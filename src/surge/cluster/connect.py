"""Joining a Ray cluster as a driver: the front end's one connection to its compute nodes.

A real driver (`ray.init(address=...)`), not a `ray://` client: actor calls then go straight
from this process to the actors' nodes. Token authentication follows Ray 2.60: a cluster
started with `RAY_AUTH_MODE=token` accepts drivers that bring the same token in
`RAY_AUTH_TOKEN` (or a file named by `RAY_AUTH_TOKEN_PATH`, default `~/.ray/auth_token`).
The dashboard and usage statistics stay off unless the environment asks for them.

What cannot work is refused in seconds with one line, before Ray spends its own long retries
on it: a malformed address, a port nothing listens on or where no gRPC server (a GCS) answers,
token mode without a token (Ray's C++ client would abort the process), a token the cluster
refuses.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from surge.errors import SurgeError

log = logging.getLogger(__name__)

# Ray reads these when it is imported: set them first, without overriding the user's own.
# Ray ends a driver whose GCS stays unreachable for 60 s (its default), with the requests in
# flight and the models served by local workers: the front end outlives its cluster instead
# (cluster models go unavailable as their nodes go; Ray reconnects if the GCS comes back).
_DRIVER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1",
               "RAY_gcs_rpc_server_reconnect_timeout_s": str(10 * 365 * 86400)}
AUTH_MODES = ("token", "disabled")  # RAY_AUTH_MODE's values in Ray 2.60 (any case)
PROBE_TIMEOUT_S = 3.0
SHUTDOWN_TIMEOUT_S = 10.0  # ray.shutdown waits on a GCS that may be gone
NAMESPACE = "surge"
# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (the GCS) answers with
# a SETTINGS frame of its own; anything else (an HTTP/1 server, a silent port) does not.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
H2_SETTINGS = 4


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


def driver_environment() -> None:
    for name, value in _DRIVER_ENV.items():
        os.environ.setdefault(name, value)
    # A token given without a mode is meant to be used: Ray would otherwise not send it.
    if not os.environ.get("RAY_AUTH_MODE") and (
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

    check_token_present()
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


def check_token_present() -> None:
    """In token mode, a token must be there: Ray's C++ client aborts the process without one."""
    from ray._raylet import (  # type: ignore[attr-defined]
        AuthenticationMode,
        AuthenticationTokenLoader,
        get_authentication_mode,
    )
    from ray.exceptions import AuthenticationError

    mode = os.environ.get("RAY_AUTH_MODE", "")
    if mode and mode.lower() not in AUTH_MODES:  # Ray would take it for "disabled", silently
        raise ClusterError(f"RAY_AUTH_MODE {mode!r} is not a mode Ray knows "
                           f"({' or '.join(AUTH_MODES)}): set RAY_AUTH_MODE=token to join a "
                           "cluster that authenticates its drivers")
    if get_authentication_mode() != AuthenticationMode.TOKEN:
        return
    with contextlib.suppress(AuthenticationError):
        if AuthenticationTokenLoader.instance().has_token():
            return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    where = (f"RAY_AUTH_TOKEN_PATH {path!r} cannot be read or is empty" if path else
             "RAY_AUTH_TOKEN is empty or unset and ~/.ray/auth_token is missing")
    raise ClusterError(f"token authentication is on (RAY_AUTH_MODE=token) but {where}: set "
                       "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token")


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
    if not 0 < int(port) < 65536:  # else the resolver takes it modulo 65536
        raise ClusterError(f"--ray {address!r}: port {port} is not in 1-65535")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT_S)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({reason})") from None
    with sock:
        if not _tls() and not answers_grpc(sock):
            raise ClusterError(
                f"{address} does not answer as a Ray cluster's GCS (no gRPC server there "
                f"within {PROBE_TIMEOUT_S:g} s): give the head's GCS port (ray start --port, "
                "6379 by default)")


def answers_grpc(sock: socket.socket) -> bool:
    """Whether the server on `sock` answers the HTTP/2 preface as a gRPC server does."""
    try:
        sock.settimeout(PROBE_TIMEOUT_S)
        sock.sendall(H2_PREFACE)
        head = b""
        while len(head) < 9:
            got = sock.recv(9 - len(head))
            if not got:
                return False
            head += got
    except OSError:  # silent (timed out) or reset: not a GCS
        return False
    return head[3] == H2_SETTINGS


def _tls() -> bool:
    """Ray's TLS mode: the GCS then speaks TLS first, and the preface would prove nothing."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def find_cluster() -> str:
    """What 'auto' means: the address of the cluster this machine belongs to (the latest
    `ray start` here, or RAY_ADDRESS)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except Exception:  # ConnectionError: no cluster found on this machine
        found = None
    if not found:
        raise ClusterError("--ray auto: no Ray cluster runs on this machine (ray start), and "
                           "RAY_ADDRESS is not set; give the head's host:port")
    return found


def connect(address: str) -> ClusterInfo:
    """Join the cluster at `address` ('auto': the one this machine belongs to) as a driver."""
    check_address(address)  # 'auto' passes: it is found, then checked, below
    driver_environment()
    import ray

    if address == "auto":  # checked as any other: Ray would retry a refused token for 20 s
        address = find_cluster()
        check_address(address)
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


def disconnect(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Leave the cluster; without waiting longer than `timeout_s` on a GCS that is gone."""
    import ray

    if not ray.is_initialized():
        return
    leaving = threading.Thread(target=ray.shutdown, name="surge-ray-shutdown", daemon=True)
    leaving.start()
    leaving.join(timeout_s)
    if leaving.is_alive():
        atexit.unregister(ray.shutdown)  # it would wait once more as the interpreter exits
        log.warning("left the Ray cluster without its goodbye: ray.shutdown() did not return "
                    "within %g s (its GCS is gone?)", timeout_s)

"""One model instance as a Ray actor on a compute node, and the messages it exchanges.

Tensors travel as one contiguous uint8 array per batch laid out by the worker transport's
`pack` (`TensorMeta` says where each tensor lies), never pickled: on the instance's direct
channel (`surge.cluster.channel`, the default), or, when that cannot be opened, as arguments of
Ray actor calls (Ray hands a numpy array over as an out-of-band buffer; over 100 KiB it goes
through the object store and the receiving node reads it in place).

Two concurrency groups: `compute` runs one batch at a time, `health` answers heartbeats while a
batch computes, so a long batch is not taken for a silent node.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from surge import __version__ as SURGE_VERSION
from surge.cluster.shared import Probe, shares_memory
from surge.platform import set_thread_env
from surge.runtimes.base import Runner, Signature, SpinWait, openmp_wait_policy, run_rows
from surge.workers.messages import TensorMeta, Warmup
from surge.workers.transport import Parts, pack, unpack

if TYPE_CHECKING:
    from surge.cluster.channel import ChannelServer

CONCURRENCY_GROUPS = {"compute": 1, "health": 1}


@dataclass(frozen=True)
class ActorSpec:
    """What an instance loads: the same repository path must exist on its node."""

    root: str
    ref: str  # model name, or name@variant
    version: int | None
    threads: int
    device: str
    spin_wait: SpinWait = False
    warmup: Warmup = None  # the front end's model_warmup; None: config.yaml's


@dataclass(frozen=True)
class InstanceInfo:
    """Actor -> front end, once loaded and warmed up (or `error` when it could not load)."""

    node_id: str = ""
    node_ip: str = ""
    pid: int = 0
    device: str = ""
    signature: Signature | None = None
    error: str = ""
    surge: str = ""  # the Surge version it runs (one from before this field sends none)


def same_surge(info: InstanceInfo) -> InstanceInfo:
    """`info`, with an error when the instance runs another Surge than this front end: the
    two ends of the channel must read each other's frames (a field one end does not know of
    is silently lost, a reply it cannot read loses the instance batch after batch)."""
    if info.error or info.surge == SURGE_VERSION:
        return info
    return replace(info, error=f"it runs Surge {info.surge or '(an older version)'}, this "
                   f"front end {SURGE_VERSION}: every node needs the front end's environment")


@dataclass(frozen=True)
class TensorBatch:
    """A batch's tensors: one contiguous buffer and where each tensor lies in it."""

    metas: tuple[TensorMeta, ...]
    buffer: np.ndarray  # uint8, 1-d


@dataclass(frozen=True)
class BatchReply:
    """Actor -> front end: the outputs of one batch, or the error the runner raised."""

    batch_id: int
    outputs: TensorBatch | None
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    error: str = ""
    rejected: tuple[tuple[int, str], ...] = ()  # rows preprocessing refused (BatchDone's)


Into = Callable[[int], "memoryview | None"]  # a buffer of at least that size, or None


def pack_batch(parts: Parts, into: Into | None = None) -> TensorBatch:
    """Copy the pieces of each tensor once, side by side, into one contiguous buffer: the one
    `into` offers (a shared-memory slot), else a fresh one."""
    holder: list[np.ndarray] = []

    def alloc(size: int) -> memoryview:
        offered = into(max(size, 1)) if into is not None else None
        holder.append(np.frombuffer(offered, np.uint8, max(size, 1)) if offered is not None
                      else np.empty(max(size, 1), np.uint8))
        return holder[0].data

    metas = pack(parts, alloc)
    return TensorBatch(metas, holder[0])


def unpack_batch(batch: TensorBatch) -> dict[str, np.ndarray]:
    """Arrays viewing the batch's buffer (read-only when it came from the object store)."""
    return unpack(batch.metas, batch.buffer.data)


class InstanceActor:
    """Loads one model instance on its node and computes the batches sent to it."""

    def __init__(self, spec: ActorSpec) -> None:
        self.spec = spec
        self.runner: Runner | None = None
        self._server: ChannelServer | None = None

    def load(self) -> InstanceInfo:
        """Load and warm up the model; the error as text when it cannot be loaded."""
        import ray

        context = ray.get_runtime_context()
        where = {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                 "pid": os.getpid(), "surge": SURGE_VERSION}
        set_thread_env(self.spec.threads)  # before the engine is imported in this process
        os.environ["OMP_WAIT_POLICY"] = openmp_wait_policy(self.spec.spin_wait)
        try:
            self.runner = _load(self.spec)
        except Exception as exc:  # reported to the front end, which marks the model not ready
            return InstanceInfo(**where, error=f"{type(exc).__name__}: {exc}")
        return InstanceInfo(**where, device=self.runner.device, signature=self.runner.signature)

    def run(self, batch_id: int, inputs: TensorBatch, into: Into | None = None) -> BatchReply:
        """Compute one batch (outputs packed where `into` says); a runner error fails the
        batch, not the instance."""
        assert self.runner is not None, "load() runs before any batch"
        started = time.perf_counter_ns()
        arrays = unpack_batch(inputs)
        loaded = time.perf_counter_ns()
        try:
            ran = run_rows(self.runner, arrays)
        except Exception as exc:
            return BatchReply(batch_id, None, error=f"{type(exc).__name__}: {exc}")
        computed = time.perf_counter_ns()
        packed = pack_batch({name: [np.ascontiguousarray(a)] for name, a in ran.outputs.items()},
                            into)
        return BatchReply(batch_id, packed, loaded - started, computed - loaded,
                          time.perf_counter_ns() - computed, rejected=ran.rejected)

    def open_channel(self, secret: bytes, probe: Probe | None = None) -> tuple[str, int, bool]:
        """Serve batches on a direct channel (see `surge.cluster.channel`): its host and port,
        and whether this node shares the front end's memory (`probe` found here)."""
        import ray

        from surge.cluster.channel import ChannelServer

        if self._server is None:
            self._server = ChannelServer(self.run, secret, ray.util.get_node_ip_address())
        host, port = self._server.address
        return host, port, probe is not None and shares_memory(probe)

    def ping(self) -> int:
        """Heartbeat: answered by the health group even while a batch computes."""
        return os.getpid()


def _load(spec: ActorSpec) -> Runner:
    from surge.repository import Repository
    from surge.runtimes import RunnerOptions
    from surge.workers.worker import load_warm

    if not os.path.isdir(spec.root):
        raise FileNotFoundError(f"model repository {spec.root} is not on this node (compute "
                                "nodes need it at the same path, e.g. on shared storage)")
    options = RunnerOptions(intra_op_threads=spec.threads, device=spec.device,
                            spin_wait=spec.spin_wait)
    return load_warm(Repository(spec.root), spec.ref, spec.version, options, spec.threads,
                     spec.warmup)
